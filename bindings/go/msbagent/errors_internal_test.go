package msbagent

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"syscall"
	"testing"
)

// The guest's filesystem failures match the io/fs sentinels by the code the
// library gives them, or by the guest's errno, and always match ErrGuest.
func TestGuestErrorsMatchFsSentinels(t *testing.T) {
	cases := []struct {
		name string
		err  *Error
		want error // the one fs sentinel it must match
	}{
		{"not found code", &Error{Code: StatusNotFound, errno: int(syscall.ENOENT)}, fs.ErrNotExist},
		{"permission code", &Error{Code: StatusPermission}, fs.ErrPermission},
		{"exists code", &Error{Code: StatusExists}, fs.ErrExist},
		{"ENOENT errno", &Error{Code: StatusGuest, errno: int(syscall.ENOENT)}, fs.ErrNotExist},
		{"EPERM errno", &Error{Code: StatusGuest, errno: int(syscall.EPERM)}, fs.ErrPermission},
		{"EEXIST errno", &Error{Code: StatusGuest, errno: int(syscall.EEXIST)}, fs.ErrExist},
	}
	sentinels := []error{fs.ErrNotExist, fs.ErrPermission, fs.ErrExist}
	for _, c := range cases {
		for _, s := range sentinels {
			if got := errors.Is(c.err, s); got != (s == c.want) {
				t.Errorf("%s: errors.Is(err, %v) = %v", c.name, s, got)
			}
		}
		if !errors.Is(c.err, ErrGuest) {
			t.Errorf("%s: does not match ErrGuest", c.name)
		}
		wrapped := &fs.PathError{Op: "stat", Path: "/x", Err: c.err}
		if !errors.Is(wrapped, c.want) || !errors.Is(wrapped, ErrGuest) {
			t.Errorf("%s: wrapped in a PathError it no longer matches", c.name)
		}
	}
	if e := (&Error{Code: StatusGuest, errno: int(syscall.EIO)}); e.Errno() != int(syscall.EIO) {
		t.Errorf("Errno() = %d, want EIO", e.Errno())
	}

	// A relay that is not there is not the guest's failure.
	noRelay := &Error{Code: StatusNotFound, Message: "no relay"}
	if errors.Is(noRelay, ErrGuest) || !errors.Is(noRelay, ErrNotFound) {
		t.Errorf("a library NOT_FOUND: ErrGuest %v, ErrNotFound %v; want false, true", errors.Is(noRelay, ErrGuest), errors.Is(noRelay, ErrNotFound))
	}
	if !errors.Is(&Error{Code: StatusExists}, ErrGuest) || !errors.Is(&Error{Code: StatusPermission}, ErrGuest) {
		t.Errorf("StatusExists and StatusPermission come from the guest and match ErrGuest")
	}
	if errors.Is(&Error{Code: StatusGuest}, fs.ErrNotExist) {
		t.Errorf("an unclassified guest failure must not claim a missing file")
	}
	if !errors.Is(&Error{Code: StatusTimeout}, context.DeadlineExceeded) {
		t.Errorf("a library timeout must match context.DeadlineExceeded")
	}
}

// The codes with a typed error come back as that type, which still
// unwraps to an *Error with the code.
func TestTypedErrors(t *testing.T) {
	err := typedError(&Error{Code: StatusExecFailed, Message: "no such command", errno: int(syscall.ENOENT)})
	var failed *ExecFailedError
	if !errors.As(err, &failed) || failed.Errno != int(syscall.ENOENT) || failed.Message != "no such command" {
		t.Fatalf("exec failure = %#v, want an *ExecFailedError with errno and message", err)
	}
	var lib *Error
	if !errors.Is(err, ErrExecFailed) || !errors.As(err, &lib) || lib.Code != StatusExecFailed {
		t.Errorf("an *ExecFailedError must unwrap to StatusExecFailed: %v", err)
	}
	if errors.Is(err, ErrAgent) || errors.Is(err, ErrGuest) {
		t.Errorf("an *ExecFailedError matches unrelated sentinels: %v", err)
	}
	missing := &ExecFailedError{Kind: "not_found", Errno: int(syscall.ENOENT), Message: "nope", Stage: "exec"}
	if !errors.Is(missing, fs.ErrNotExist) {
		t.Errorf("an exec failure with ENOENT should match fs.ErrNotExist")
	}
	denied := &ExecFailedError{Errno: int(syscall.EACCES)}
	if !errors.Is(denied, fs.ErrPermission) || errors.Is(denied, fs.ErrNotExist) {
		t.Errorf("an exec failure with EACCES should match fs.ErrPermission only")
	}
	for _, want := range []string{"not_found", "nope", "exec", "errno 2"} {
		if !strings.Contains(missing.Error(), want) {
			t.Errorf("%q does not mention %q", missing.Error(), want)
		}
	}

	err = typedError(&Error{Code: StatusAgent, Message: "unknown message type"})
	var agent *AgentError
	if !errors.As(err, &agent) || agent.Message != "unknown message type" || !errors.Is(err, ErrAgent) {
		t.Fatalf("agent error = %#v, want an *AgentError matching ErrAgent", err)
	}

	for _, s := range []*Error{ErrUnsupported, ErrRelayBusy, ErrIDsExhausted, ErrPermission, ErrExists, ErrStreamOverflow} {
		if typedError(&Error{Code: s.Code}) == nil || !errors.Is(&Error{Code: s.Code, Message: "m"}, s) {
			t.Errorf("sentinel for %d does not match its code", int32(s.Code))
		}
	}
	if errors.Is(ErrUnsupported, ErrRelayBusy) {
		t.Errorf("distinct codes must not match each other")
	}
}

// The library writes a core.error answer as "the agent refused the request
// (KIND): MESSAGE"; the kind is taken out of it, and any other text is
// kept whole as the message.
func TestAgentErrorKind(t *testing.T) {
	err := typedError(&Error{Code: StatusAgent, Message: "the agent refused the request (invalid_payload): missing field `cmd`"})
	var agent *AgentError
	if !errors.As(err, &agent) || agent.Kind != "invalid_payload" || agent.Message != "missing field `cmd`" {
		t.Fatalf("core.error = %#v, want kind invalid_payload and the message", err)
	}
	if !strings.Contains(agent.Error(), "invalid_payload") || !strings.Contains(agent.Error(), "missing field") {
		t.Errorf("Error() = %q, want the kind and the message", agent.Error())
	}
	err = typedError(&Error{Code: StatusAgent, Message: "some other shape"})
	if !errors.As(err, &agent) || agent.Kind != "" || agent.Message != "some other shape" {
		t.Fatalf("core.error of another shape = %#v, want the whole text as message", err)
	}
}
