package bench

import (
	"os"
	"testing"

	"github.com/plinth-dev/plinth/test/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunChildIfAsked()
	os.Exit(m.Run())
}
