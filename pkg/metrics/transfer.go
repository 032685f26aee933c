package metrics

import "github.com/prometheus/client_golang/prometheus"

// TransferMeter counts the data a node's transfer service sends and
// receives (plinth_transfer_bytes_total{direction}), for pkg/transfer.
type TransferMeter struct {
	bytes *prometheus.CounterVec
}

// NewTransferMeter makes the counter; Register it with Metrics.Register.
func NewTransferMeter() *TransferMeter {
	return &TransferMeter{bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "plinth_transfer_bytes_total",
		Help: "Volume data this node sent to (direction=sent) or received from (direction=received) other nodes; holes and chunks of zeros are not sent.",
	}, []string{"direction"})}
}

// Describe and Collect make it a prometheus.Collector.
func (t *TransferMeter) Describe(ch chan<- *prometheus.Desc) { t.bytes.Describe(ch) }
func (t *TransferMeter) Collect(ch chan<- prometheus.Metric) { t.bytes.Collect(ch) }

// Sent counts n bytes sent.
func (t *TransferMeter) Sent(n int) { t.bytes.WithLabelValues("sent").Add(float64(n)) }

// Received counts n bytes received.
func (t *TransferMeter) Received(n int) { t.bytes.WithLabelValues("received").Add(float64(n)) }
