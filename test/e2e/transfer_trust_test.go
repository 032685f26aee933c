package e2e

import (
	"context"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/reconcile"
	"github.com/plinth-dev/plinth/pkg/transfer"
	"github.com/plinth-dev/plinth/test/e2e/cluster"
)

// intruders asks src's real transfer service, over the worker network,
// for the content of volume object volumeID (one filled from src for
// another node) as two nodes it must refuse:
//   - a third node with a valid certificate of its own, published in a
//     PlinthNode of its name: TLS lets it in (its certificate is the one
//     published), and the service answers PERMISSION_DENIED, as the volume
//     object names another node;
//   - an impostor that claims to be the named node with a key of its own:
//     the handshake fails, since src pins the certificate the named node
//     published.
//
// Neither starts a receive.
func intruders(t *testing.T, ctx context.Context, src, named *cluster.Worker, volumeID string) {
	t.Helper()
	peers := &reconcile.Peers{Plinth: e.plinth}
	never := func(context.Context) (io.WriteCloser, error) {
		t.Error("a refused transfer started a receive")
		return nil, io.ErrClosedPipe
	}
	third, err := transfer.NewIdentity("plinth-e2e-third")
	if err != nil {
		t.Fatal(err)
	}
	pn, err := e.plinth.PlinthV1alpha1().PlinthNodes().Create(ctx, &v1alpha1.PlinthNode{ObjectMeta: metav1.ObjectMeta{Name: third.Node}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.plinth.PlinthV1alpha1().PlinthNodes().Delete(context.Background(), third.Node, metav1.DeleteOptions{})
	})
	pn.Status.Transfer = &v1alpha1.TransferEndpoint{Address: "10.250.0.99:7460", Certificate: third.CertificatePEM()}
	if _, err := e.plinth.PlinthV1alpha1().PlinthNodes().UpdateStatus(ctx, pn, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := &transfer.Client{Identity: third, Peers: peers}
	err = c.FillStream(ctx, src.Name, volumeID, never, nil)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a third node's request for volume %s on %s: %v, want PermissionDenied", volumeID, src.Name, err)
	}
	logf("nodes: a third node with a published certificate of its own asked %s for volume %s: %v", src.Name, volumeID, err)

	impostor, err := transfer.NewIdentity(named.Name)
	if err != nil {
		t.Fatal(err)
	}
	c = &transfer.Client{Identity: impostor, Peers: peers}
	err = c.FillStream(ctx, src.Name, volumeID, never, nil)
	if err == nil || status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.OK {
		t.Fatalf("an impostor of %s with a key of its own: %v, want the handshake refused", named.Name, err)
	}
	logf("nodes: an impostor of %s (its own key) asked %s for volume %s: %v", named.Name, src.Name, volumeID, err)
}
