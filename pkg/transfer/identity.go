package transfer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Identity is one node's key pair and self-signed certificate, made at
// start and never written to disk: a restart makes a new one and publishes
// it again.
type Identity struct {
	Node string
	cert tls.Certificate
	pem  []byte
}

// certLifetime bounds a certificate; a node agent restarts (and so makes a
// new one) far more often than this.
const certLifetime = 365 * 24 * time.Hour

// NewIdentity makes node's key pair (ECDSA P-256) and a self-signed
// certificate whose common name is the node's name.
func NewIdentity(node string) (*Identity, error) {
	if node == "" {
		return nil, errors.New("transfer identity: empty node name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("transfer identity: make key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("transfer identity: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: node, Organization: []string{"plinth node"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("transfer identity: make certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Identity{
		Node: node,
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		pem:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

// CertificatePEM is what the node publishes (PlinthNode status.transfer).
func (id *Identity) CertificatePEM() string { return string(id.pem) }

// ParseCertificatePEM reads one published certificate: exactly one PEM
// block of type CERTIFICATE and nothing else; its DER bytes are what a
// peer must present.
func ParseCertificatePEM(s string) ([]byte, error) {
	block, rest := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	if len(rest) != 0 && len(pemTrim(rest)) != 0 {
		return nil, errors.New("more than one PEM block")
	}
	if _, err := x509.ParseCertificate(block.Bytes); err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return block.Bytes, nil
}

func pemTrim(b []byte) []byte {
	for len(b) > 0 && (b[0] == '\n' || b[0] == '\r' || b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}
