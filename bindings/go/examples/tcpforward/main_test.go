package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test runs the program itself: the test binary re-executes itself
// with TCPFORWARD_RUN_MAIN=1 and the program's flags, and main runs then.
func TestMain(m *testing.M) {
	if os.Getenv("TCPFORWARD_RUN_MAIN") == "1" {
		os.Args = append([]string{"tcpforward"}, strings.Fields(os.Getenv("TCPFORWARD_ARGS"))...)
		main()
		os.Exit(0)
	}
	if os.Getenv("MSB_SOCKET") == "" {
		fmt.Fprintln(os.Stderr, "FAIL: MSB_SOCKET is not set; run the tests through scripts/test-go.sh (or scripts/with-devrelay.sh)")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// relayHasTCP says whether the relay's profile (MSB_DEVRELAY_PROFILE, the
// relay's default being 0.7.13) has TCP: generation 4 and later.
func relayHasTCP(t *testing.T) bool {
	switch profile := os.Getenv("MSB_DEVRELAY_PROFILE"); profile {
	case "0.3.14":
		return false
	case "", "0.6.14", "0.7.13":
		return true
	default:
		t.Fatalf("unknown MSB_DEVRELAY_PROFILE %q", profile)
		return false
	}
}

// echoServer echoes each connection until the client half-closes.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
			}()
		}
	}()
	return l
}

// startForwarder runs the program towards target and returns it with its
// stdout, positioned after nothing has been read.
func startForwarder(t *testing.T, target string) (*exec.Cmd, *bufio.Reader, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TCPFORWARD_RUN_MAIN=1",
		"TCPFORWARD_ARGS=-socket "+os.Getenv("MSB_SOCKET")+" -listen 127.0.0.1:0 -target "+target)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, bufio.NewReader(stdout), &stderr
}

// Several connections at once through the forwarder, each with its own
// data and a half-close, then a clean stop on SIGTERM.
func TestForwardsConcurrentConnections(t *testing.T) {
	server := echoServer(t)
	cmd, stdout, stderr := startForwarder(t, server.Addr().String())
	if !relayHasTCP(t) {
		// The 0.3.14 profile has no TCP: the program must say so and fail.
		err := cmd.Wait()
		if err == nil || !strings.Contains(stderr.String(), "generation 1") {
			t.Fatalf("against a legacy sandbox the forwarder = %v, stderr %q; want a failure naming generation 1", err, stderr.String())
		}
		return
	}
	line, err := stdout.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "listening on ") {
		t.Fatalf("first line %q, %v (stderr %q)", line, err, stderr.String())
	}
	address := strings.TrimSpace(strings.TrimPrefix(line, "listening on "))

	const connections = 8
	var wg sync.WaitGroup
	errs := make(chan error, connections)
	for i := 0; i < connections; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			conn, err := net.DialTimeout("tcp", address, 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			want := bytes.Repeat([]byte(fmt.Sprintf("connection %d; ", i)), 20000)
			go func() {
				conn.Write(want)
				conn.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(conn)
			if err != nil {
				errs <- fmt.Errorf("connection %d: %v", i, err)
				return
			}
			if !bytes.Equal(got, want) {
				errs <- fmt.Errorf("connection %d: got %d bytes back, want its own %d", i, len(got), len(want))
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the forwarder stopped with %v (stderr %q)", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the forwarder did not stop on SIGTERM")
	}
}
