package kubelet

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	dpapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// registrar is the kubelet's Registration service: it records when each
// request arrived.
type registrar struct {
	dpapi.UnimplementedRegistrationServer
	got chan time.Time
}

func (r *registrar) Register(context.Context, *dpapi.RegisterRequest) (*dpapi.Empty, error) {
	r.got <- time.Now()
	return &dpapi.Empty{}, nil
}

// A restarting kubelet creates its socket (bind) before it listens on it;
// plinth, woken by the file, dials in between and is refused. It registers
// as soon as the kubelet listens, not at gRPC's first backoff (a second):
// the test prints how long after the listen each registration came.
func TestRegisterWhileTheKubeletBindsBeforeItListens(t *testing.T) {
	const runs = 5
	var took []time.Duration
	for i := 0; i < runs; i++ {
		sock := filepath.Join(t.TempDir(), "kubelet.sock")
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			done <- RegisterDevicePlugin(context.Background(), sock, "plinth-gpu.sock", "example.com/gpu", nil)
		}()
		time.Sleep(50 * time.Millisecond) // refused meanwhile: bound, not listening
		if err := unix.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
		listening := time.Now()
		l, err := net.FileListener(os.NewFile(uintptr(fd), sock))
		if err != nil {
			t.Fatal(err)
		}
		r := &registrar{got: make(chan time.Time, 1)}
		srv := grpc.NewServer()
		dpapi.RegisterRegistrationServer(srv, r)
		go func() { _ = srv.Serve(l) }()
		if err := <-done; err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		took = append(took, (<-r.got).Sub(listening))
		srv.Stop()
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	t.Logf("registered after the kubelet listened: min %s, median %s, max %s (%d runs)", took[0], took[len(took)/2], took[len(took)-1], runs)
}
