// tcpforward forwards a local TCP port into a sandbox: each connection
// accepted on the local address is opened from the guest to the target,
// and bytes are copied both ways (half-closes included) until both sides
// are done. Connections are served concurrently.
//
//	go run ./examples/tcpforward -socket /path/to/agent.sock -listen 127.0.0.1:8080 -target localhost:80
//	go run ./examples/tcpforward -sandbox NAME -target localhost:5432
//
// It prints "listening on ADDR" once it accepts, and stops on SIGINT or
// SIGTERM. The sandbox must speak protocol generation 4 (0.5.5 and later).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

// dialTimeout bounds opening each connection in the guest.
const dialTimeout = 10 * time.Second

func main() {
	socket := flag.String("socket", "", "the sandbox's relay socket (agent.sock)")
	sandbox := flag.String("sandbox", "", "the sandbox's name (instead of -socket)")
	listen := flag.String("listen", "127.0.0.1:0", "local address to accept connections on")
	target := flag.String("target", "", "host:port to connect to from inside the sandbox")
	flag.Parse()
	if *target == "" || (*socket == "") == (*sandbox == "") {
		fmt.Fprintln(os.Stderr, "usage: tcpforward (-socket PATH | -sandbox NAME) [-listen ADDR] -target HOST:PORT")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	connectCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	var client *msbagent.Client
	var err error
	if *socket != "" {
		client, err = msbagent.Connect(connectCtx, *socket)
	} else {
		client, err = msbagent.ConnectSandbox(connectCtx, *sandbox)
	}
	cancel()
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if !client.Supports("core.tcp.connect") {
		log.Fatalf("the sandbox cannot open TCP connections: it speaks protocol generation %d, TCP needs 4", client.Generation())
	}

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	if err := forward(ctx, client, listener, *target); err != nil {
		log.Fatal(err)
	}
}

// forward accepts connections on listener until ctx ends, serving each on
// its own goroutine, then waits for them to finish.
func forward(ctx context.Context, client *msbagent.Client, listener net.Listener, target string) error {
	go func() {
		<-ctx.Done()
		listener.Close()
	}()
	var served sync.WaitGroup
	defer served.Wait()
	for {
		local, err := listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		served.Add(1)
		go func() {
			defer served.Done()
			if err := serve(ctx, client, local, target); err != nil {
				log.Printf("%s: %v", local.RemoteAddr(), err)
			}
		}()
	}
}

// halfCloser is a connection whose sending side can be closed alone.
type halfCloser interface {
	CloseWrite() error
}

// serve forwards one connection: it dials target from the guest and copies
// each way until that way's sender closes, passing the close on as a
// half-close, so that request/response protocols that rely on it work.
func serve(ctx context.Context, client *msbagent.Client, local net.Conn, target string) error {
	defer local.Close()
	dialCtx, cancel := context.WithTimeout(ctx, dialTimeout)
	remote, err := client.Dial(dialCtx, "tcp", target)
	cancel()
	if err != nil {
		return err
	}
	defer remote.Close()

	// Stopping the forwarder ends the connections in progress.
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-ctx.Done():
			local.Close()
			remote.Close()
		case <-finished:
		}
	}()

	copyErrs := make(chan error, 2)
	pipe := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if hc, ok := dst.(halfCloser); ok {
			if closeErr := hc.CloseWrite(); err == nil && !errors.Is(closeErr, net.ErrClosed) {
				err = closeErr
			}
		}
		copyErrs <- err
	}
	go pipe(remote, local)
	go pipe(local, remote)
	var firstErr error
	for i := 0; i < 2; i++ {
		if err := <-copyErrs; err != nil && firstErr == nil && ctx.Err() == nil {
			firstErr = err
		}
	}
	return firstErr
}
