// Command e2e-app is the program the end-to-end suite's pods run (and, as
// "pause", the pod sandbox): small checks a test reads from the pod's log.
//
//	e2e-app pause                  block until SIGTERM (the sandbox image)
//	e2e-app write FILE TEXT        write TEXT to FILE (fsync), then block
//	e2e-app fs DIR                 print DIR's filesystem size every second, block
//	e2e-app block DEV              write and read back a pattern on a block device, block
//	e2e-app devices                print PLINTH_* env and /dev entries, block
//	e2e-app fill FILE MIB SEED     write MIB MiB of data made from SEED to FILE (fsync; found=1 when it was
//	                               there already, then nothing is written), print its SHA-256, block
//	e2e-app fillblock DEV MIB SEED as fill, on a block device: a marker at its start says it was filled
//	                               (found=1); prints the SHA-256 of the whole device, block
//	e2e-app sum FILE [BYTES]       print the SHA-256 of FILE (of its first BYTES), block
//	e2e-app iops DEV               read DEV in 4 KiB blocks with O_DIRECT for ever (each read waits
//	                               for the device: the page cache is not in the way); print the
//	                               reads done in each second: "iops=N t=UNIXSECONDS"
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: e2e-app pause|write|read|files|fs|block|devices ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pause":
	case "write":
		must(write(os.Args[2], os.Args[3]))
		if b, err := os.ReadFile(os.Args[2]); err == nil {
			fmt.Printf("content=%s\n", b)
		}
	case "read":
		b, err := os.ReadFile(os.Args[2])
		must(err)
		fmt.Printf("content=%s\n", b)
	case "files":
		// files DIR: each regular file's name and content, sorted by name.
		entries, err := os.ReadDir(os.Args[2])
		must(err)
		var out []string
		for _, e := range entries {
			if e.Type().IsRegular() {
				b, err := os.ReadFile(filepath.Join(os.Args[2], e.Name()))
				must(err)
				out = append(out, e.Name()+":"+string(b))
			}
		}
		fmt.Printf("files=%s\n", strings.Join(out, ","))
	case "fs":
		go func() {
			for {
				var st unix.Statfs_t
				if err := unix.Statfs(os.Args[2], &st); err == nil {
					fmt.Printf("size=%d\n", int64(st.Blocks)*st.Bsize)
				}
				time.Sleep(time.Second)
			}
		}()
	case "block":
		must(block(os.Args[2]))
	case "fill":
		mib, err := strconv.Atoi(os.Args[3])
		must(err)
		seed, err := strconv.ParseUint(os.Args[4], 10, 64)
		must(err)
		if _, err := os.Stat(os.Args[2]); err == nil {
			fmt.Println("found=1")
		} else {
			must(fill(os.Args[2], mib, seed))
		}
		must(sum(os.Args[2], -1))
	case "fillblock":
		mib, err := strconv.Atoi(os.Args[3])
		must(err)
		seed, err := strconv.ParseUint(os.Args[4], 10, 64)
		must(err)
		found, err := fillBlock(os.Args[2], mib, seed)
		must(err)
		if found {
			fmt.Println("found=1")
		}
		must(sum(os.Args[2], -1))
	case "sum":
		n := int64(-1)
		if len(os.Args) > 3 {
			v, err := strconv.ParseInt(os.Args[3], 10, 64)
			must(err)
			n = v
		}
		must(sum(os.Args[2], n))
	case "iops":
		must(iops(os.Args[2])) // never returns but on an error
	case "devices":
		var env []string
		for _, e := range os.Environ() {
			if strings.HasPrefix(e, "PLINTH_") {
				env = append(env, e)
			}
		}
		sort.Strings(env)
		fmt.Printf("env=%s\n", strings.Join(env, ";"))
		entries, _ := os.ReadDir("/dev")
		for _, e := range entries {
			if e.Type()&os.ModeCharDevice != 0 && strings.HasPrefix(e.Name(), "nvidia") {
				fmt.Printf("chardev=/dev/%s\n", e.Name())
			}
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

// iops reads dev with O_DIRECT, 4 KiB at a time at spread offsets, and
// prints how many reads completed in each wall-clock second.
func iops(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	size, err := unix.Seek(fd, 0, io.SeekEnd)
	if err != nil {
		return err
	}
	blocks := size / 4096
	if blocks == 0 {
		return fmt.Errorf("%s is smaller than a block", dev)
	}
	// O_DIRECT wants an aligned buffer: the start of an mmap'd page.
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	sec, n := time.Now().Unix(), 0
	for i := int64(0); ; i++ {
		if _, err := unix.Pread(fd, buf, (i*7919%blocks)*4096); err != nil {
			return err
		}
		n++
		if now := time.Now().Unix(); now != sec {
			fmt.Printf("iops=%d t=%d\n", n, sec)
			sec, n = now, 0
		}
	}
}

// fill writes mib MiB of pseudo-random bytes from seed to path, fsynced.
func fill(path string, mib int, seed uint64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 1<<20)
	for range mib {
		for i := 0; i < len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
		}
		if _, err := f.Write(buf); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// blockMarker starts a device fillBlock filled.
var blockMarker = []byte("plinth-e2e-fill\x00")

// fillBlock writes mib MiB made from seed at the start of device dev,
// the first bytes a marker; found: the marker was there, nothing written.
func fillBlock(dev string, mib int, seed uint64) (found bool, err error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	head := make([]byte, len(blockMarker))
	if _, err := io.ReadFull(f, head); err != nil {
		return false, err
	}
	if bytes.Equal(head, blockMarker) {
		return true, nil
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 1<<20)
	for i := range mib {
		for j := 0; j < len(buf); j += 8 {
			binary.LittleEndian.PutUint64(buf[j:], r.Uint64())
		}
		if i == 0 {
			copy(buf, blockMarker)
		}
		if _, err := f.WriteAt(buf, int64(i)<<20); err != nil {
			return false, err
		}
	}
	return false, f.Sync()
}

// sum prints sum=<SHA-256 of path> (of its first n bytes when n >= 0).
func sum(path string, n int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	var r io.Reader = f
	if n >= 0 {
		r = io.LimitReader(f, n)
	}
	if _, err := io.Copy(h, r); err != nil {
		return err
	}
	fmt.Printf("sum=%x\n", h.Sum(nil))
	return nil
}

func must(err error) {
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

func write(path, text string) error {
	if b, err := os.ReadFile(path); err == nil {
		fmt.Printf("found=%s\n", b)
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func block(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, 2)
	if err != nil {
		return err
	}
	pattern := bytes.Repeat([]byte("plinth-block"), 4096/12+1)[:4096]
	if _, err := f.WriteAt(pattern, 4096); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 4096); err != nil {
		return err
	}
	fi, _ := f.Stat()
	fmt.Printf("blockdev=%t size=%d roundtrip=%t\n", fi.Mode()&os.ModeDevice != 0, size, bytes.Equal(got, pattern))
	return nil
}
