package bytesize

import "testing"

func TestFormat(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0B", 512: "512B", 1024: "1KiB", 4399 << 10: "4.3MiB", 512 << 20: "512MiB", 2 << 30: "2GiB",
		71026760 << 10: "67.7GiB", 1536 << 20: "1.5GiB", 3 << 40: "3TiB", -(1 << 20): "-1MiB", 1<<62 + 1<<61: "6EiB",
	} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q, want %q", n, got, want)
		}
	}
}
