package transfer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Peer is what a node published for transfers: where it listens and the
// certificate it presents (DER).
type Peer struct {
	Address string
	Cert    []byte
}

// Peers looks up what a node published (its PlinthNode status, read from
// the API server).
type Peers interface {
	Peer(ctx context.Context, node string) (Peer, error)
}

// Refresher is Peers that keep what they read: Refresh reads a node's
// published certificate again, for one that did not match.
type Refresher interface {
	Refresh(ctx context.Context, node string) (Peer, error)
}

// ErrNotPeer: the other side presented no certificate, or not the one the
// node it claims to be published.
var ErrNotPeer = errors.New("not a plinth node's published certificate")

// pinned checks that rawCerts is exactly the certificate node published.
// Chains, CAs and host names play no part: the published bytes are the
// whole of the trust.
func pinned(ctx context.Context, peers Peers, node string, rawCerts [][]byte) error {
	if len(rawCerts) != 1 {
		return fmt.Errorf("%w: %d certificates presented, want 1", ErrNotPeer, len(rawCerts))
	}
	p, err := peers.Peer(ctx, node)
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	if r, ok := peers.(Refresher); ok && !bytes.Equal(p.Cert, rawCerts[0]) {
		// What was read may be from before the node's agent restarted.
		if p, err = r.Refresh(ctx, node); err != nil {
			return fmt.Errorf("node %s: %w", node, err)
		}
	}
	if len(p.Cert) == 0 || !bytes.Equal(p.Cert, rawCerts[0]) {
		return fmt.Errorf("%w: node %s published another one", ErrNotPeer, node)
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotPeer, err)
	}
	if now := time.Now(); now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return fmt.Errorf("%w: node %s's certificate is not valid now", ErrNotPeer, node)
	}
	return nil
}

// lookupTimeout bounds the API read behind a handshake's check.
const lookupTimeout = 10 * time.Second

// serverTLS is the server's side: TLS 1.3 only, a client certificate
// required, and accepted only when it is, byte for byte, the one the node
// named in its common name published.
func serverTLS(id *Identity, peers Peers) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientAuth:   tls.RequireAnyClientCert,
		// No resumed sessions: VerifyPeerCertificate is not called for
		// them, so a ticket would outlive a certificate its node has
		// since replaced.
		SessionTicketsDisabled: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) != 1 {
				return fmt.Errorf("%w: %d certificates presented, want 1", ErrNotPeer, len(raw))
			}
			cert, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return fmt.Errorf("%w: %v", ErrNotPeer, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
			defer cancel()
			return pinned(ctx, peers, cert.Subject.CommonName, raw)
		},
	}
}

// clientTLS is the caller's side for a transfer from node: the server must
// present what node published.
func clientTLS(id *Identity, peers Peers, node string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		// The chain is not verified against any CA: the check below pins
		// the published certificate itself.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
			defer cancel()
			return pinned(ctx, peers, node, raw)
		},
	}
}
