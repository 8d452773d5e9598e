// Quickstart: connect to a relay, run a command, stream one, and round-trip
// a file.
//
//	go run ./examples/quickstart /path/to/agent.sock
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/microsandbox/libmicrosandbox_agent/bindings/go/msbagent"
)

func main() {
	if len(os.Args) != 2 {
		log.Fatalf("usage: %s RELAY_SOCKET_PATH", os.Args[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := msbagent.Connect(ctx, os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// Run to completion.
	res, err := client.Run(ctx, "echo", &msbagent.ExecOptions{Args: []string{"hello from the sandbox"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("exit %d: %s", res.ExitCode, res.Stdout)

	// Stream: feed stdin, read stdout as it comes.
	proc, err := client.Exec(ctx, "tr", &msbagent.ExecOptions{Args: []string{"a-z", "A-Z"}})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		io.WriteString(proc.Stdin(), "shouted through a pipe\n")
		proc.Stdin().Close()
	}()
	if _, err := io.Copy(os.Stdout, proc.Stdout()); err != nil {
		log.Fatal(err)
	}
	if code, err := proc.Wait(); err != nil || code != 0 {
		log.Fatalf("tr: exit %d, %v", code, err)
	}

	// Files. MkdirAll creates missing parents and accepts existing directories.
	if err := client.MkdirAll(ctx, "/tmp"); err != nil {
		log.Fatal(err)
	}
	if err := client.WriteFile(ctx, "/tmp/hello.txt", []byte("hi\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	data, err := client.ReadFile(ctx, "/tmp/hello.txt")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("read back %q\n", data)
}
