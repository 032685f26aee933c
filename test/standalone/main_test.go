package standalone

import (
	"os"
	"testing"

	"github.com/plinth-dev/plinth/pkg/volume"
	"github.com/plinth-dev/plinth/test/testenv"
)

func TestMain(m *testing.M) {
	testenv.RunChildIfAsked()
	os.Exit(m.Run())
}

// volumeIDFunc is plinth's derivation of a volume ID from its name.
var volumeIDFunc = volume.VolumeID
