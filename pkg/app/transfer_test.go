package app

import (
	"context"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// What other nodes dial: the advertised host (a pod IP, v4 or v6) with
// the listen port, a host:port as given, the listen host, or the Node's
// InternalIP.
func TestTransferAdvertise(t *testing.T) {
	core := fake.NewSimpleClientset(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeHostName, Address: "n1"}, {Type: v1.NodeInternalIP, Address: "10.0.0.7"}}}})
	for _, tc := range []struct{ listen, adv, want string }{
		{":7460", "", "10.0.0.7:7460"},
		{"0.0.0.0:7460", "", "10.0.0.7:7460"},
		{"192.168.1.5:7460", "", "192.168.1.5:7460"},
		{":7460", "10.244.1.9", "10.244.1.9:7460"},
		{":7460", "fd00::12", "[fd00::12]:7460"},
		{":7460", "peer.example:9000", "peer.example:9000"},
	} {
		c := TransferConfig{Address: tc.listen, Advertise: tc.adv}
		if err := c.validate(); err != nil {
			t.Fatalf("%+v: %v", tc, err)
		}
		got, err := advertise(context.Background(), c, "n1", core)
		if err != nil || got != tc.want {
			t.Errorf("advertise(%q, %q) = %q, %v; want %q", tc.listen, tc.adv, got, err, tc.want)
		}
	}
	for _, bad := range []TransferConfig{
		{Address: "7460"}, {Address: ":99999"}, {Address: ":7460", Advertise: "a b"}, {Address: ":7460", Advertise: "h:0"},
		{Address: ":7460", Bandwidth: "-1Mi"}, {Address: ":7460", Bandwidth: "10"}, {Address: ":7460", Bandwidth: "fast"},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	ok := TransferConfig{Address: ":7460", Bandwidth: "200Mi"}
	if err := ok.validate(); err != nil || ok.limiter() == nil || ok.bytesPerSecond != 200<<20 {
		t.Errorf("200Mi: %v, %d", err, ok.bytesPerSecond)
	}
}
