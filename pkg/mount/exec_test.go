package mount

import (
	"context"
	"testing"
)

func TestExecCountsLaunches(t *testing.T) {
	run := Exec{Launches: &Launches{}}
	ctx := context.Background()
	for _, name := range []string{"true", "true", "false"} {
		_, _ = run.Run(ctx, name)
	}
	got := run.Launches.Counts()
	if got["true"] != 2 || got["false"] != 1 || len(got) != 2 {
		t.Fatalf("counts = %v, want true:2 false:1", got)
	}
	if _, err := (Exec{}).Run(ctx, "true"); err != nil { // the zero Exec counts nothing
		t.Fatal(err)
	}
}
