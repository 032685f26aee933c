// Command e2e-app is the program the end-to-end suite's pods run (and, as
// "pause", the pod sandbox): small checks a test reads from the pod's log.
//
//	e2e-app pause                  block until SIGTERM (the sandbox image)
//	e2e-app write FILE TEXT        write TEXT to FILE (fsync), then block
//	e2e-app fs DIR                 print DIR's filesystem size every second, block
//	e2e-app block DEV              write and read back a pattern on a block device, block
//	e2e-app devices                print PLINTH_* env and /dev entries, block
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
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
