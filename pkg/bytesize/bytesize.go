package bytesize

import "fmt"

// Format prints a size the way a person reads it, in the largest
// binary unit it reaches: whole when it is a whole number of that unit
// (512MiB, 2GiB), else to one decimal (67.7GiB); bytes below 1KiB (512B).
func Format(n int64) string {
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%dB", n)
	}
	sign := ""
	if n < 0 {
		sign, n = "-", -n
	}
	unit, exp := int64(1024), 0
	for exp < 5 && n/unit >= 1024 {
		unit *= 1024
		exp++
	}
	if n%unit == 0 {
		return fmt.Sprintf("%s%d%ciB", sign, n/unit, "KMGTPE"[exp])
	}
	return fmt.Sprintf("%s%.1f%ciB", sign, float64(n)/float64(unit), "KMGTPE"[exp])
}
