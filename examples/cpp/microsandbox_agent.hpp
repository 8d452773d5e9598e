// C++17 RAII wrappers over the C API of libmicrosandbox_agent: an example of
// how C++ callers can use the library, not part of its ABI. Copy and adapt.
//
// - Every handle is a std::unique_ptr with the handle's own msb_*_free as
//   deleter, so nothing leaks on an early return or an exception.
// - Failures throw msb::Error, which carries the status code and the
//   library's message (taken from the msb_error, which is then released).
// - Borrowed memory is exposed as views (ByteView, std::string_view) that
//   are valid exactly as long as the object they came from.
// - Thread safety is the C library's: see the handle types in the header.
#ifndef MICROSANDBOX_AGENT_HPP
#define MICROSANDBOX_AGENT_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "microsandbox_agent.h"

namespace msb {

using Timeout = std::chrono::milliseconds;
inline constexpr Timeout no_limit{MSB_TIMEOUT_INFINITE};
inline constexpr Timeout default_timeout{std::chrono::seconds(10)};

namespace detail {

// Deleter calling the C free function given as a template argument.
template <auto FreeFn>
struct Free {
    template <class T>
    void operator()(T *handle) const noexcept {
        FreeFn(handle);
    }
};

template <class T, auto FreeFn>
using Handle = std::unique_ptr<T, Free<FreeFn>>;

// The C API wants NUL-terminated strings; a string_view may not be one, and
// an embedded NUL would silently cut the string short, so it is refused.
inline std::string to_c_string(std::string_view text) {
    if (text.find('\0') != std::string_view::npos)
        throw std::invalid_argument("string passed to libmicrosandbox_agent contains a NUL byte");
    return std::string(text);
}

}  // namespace detail

// A failed call: the status code plus the library's message.
class Error : public std::runtime_error {
public:
    // Takes ownership of `err` (may be NULL) and releases it.
    Error(std::string_view call, msb_status code, msb_error *err)
        : std::runtime_error(describe(call, code, err)), code_(code) {}

    msb_status code() const noexcept { return code_; }

private:
    static std::string describe(std::string_view call, msb_status code, msb_error *err) {
        detail::Handle<msb_error, msb_error_free> owned(err);
        std::string text(call);
        text += ": ";
        text += owned ? msb_error_message(owned.get()) : msb_status_str(code);
        return text;
    }

    msb_status code_;
};

namespace detail {

// Runs `call(&err)` and throws msb::Error for a negative status; returns
// non-negative statuses (MSB_OK, MSB_NOTHING_YET, MSB_ENDED) to the caller.
template <class Call>
msb_status check(std::string_view name, Call &&call) {
    msb_error *err = nullptr;
    const msb_status status = std::forward<Call>(call)(&err);
    if (status < 0) throw Error(name, status, err);
    return status;
}

}  // namespace detail

// A borrowed, read-only byte range (C++17 has no std::span).
class ByteView {
public:
    constexpr ByteView() noexcept = default;
    constexpr ByteView(const std::uint8_t *data, std::size_t size) noexcept : data_(data), size_(size) {}
    // Views the bytes of a string; no copy, no terminating NUL.
    ByteView(std::string_view text) noexcept
        : data_(reinterpret_cast<const std::uint8_t *>(text.data())), size_(text.size()) {}

    const std::uint8_t *data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    const std::uint8_t *begin() const noexcept { return data_; }
    const std::uint8_t *end() const noexcept { return data_ + size_; }
    std::string_view as_string_view() const noexcept {
        return {reinterpret_cast<const char *>(data_), size_};
    }

private:
    const std::uint8_t *data_ = nullptr;
    std::size_t size_ = 0;
};

// An owned buffer returned by the library (file contents, output chunks).
class Bytes {
public:
    explicit Bytes(msb_bytes *owned) noexcept : bytes_(owned) {}
    // Valid while this Bytes lives.
    ByteView view() const noexcept { return {msb_bytes_data(bytes_.get()), msb_bytes_len(bytes_.get())}; }
    std::string_view as_string_view() const noexcept { return view().as_string_view(); }

private:
    detail::Handle<msb_bytes, msb_bytes_free> bytes_;
};

// A command to run: the builder of msb_exec_request.
class Command {
public:
    explicit Command(std::string_view program) {
        detail::check("msb_exec_request_new", [&](msb_error **err) {
            msb_exec_request *raw = nullptr;
            const msb_status st = msb_exec_request_new(detail::to_c_string(program).c_str(), &raw, err);
            request_.reset(raw);
            return st;
        });
    }

    Command &arg(std::string_view value) {
        detail::check("msb_exec_request_add_arg", [&](msb_error **err) {
            return msb_exec_request_add_arg(request_.get(), detail::to_c_string(value).c_str(), err);
        });
        return *this;
    }

    Command &env(std::string_view key, std::string_view value) {
        detail::check("msb_exec_request_add_env", [&](msb_error **err) {
            return msb_exec_request_add_env(request_.get(), detail::to_c_string(key).c_str(),
                                            detail::to_c_string(value).c_str(), err);
        });
        return *this;
    }

    Command &cwd(std::string_view dir) {
        detail::check("msb_exec_request_set_cwd", [&](msb_error **err) {
            return msb_exec_request_set_cwd(request_.get(), detail::to_c_string(dir).c_str(), err);
        });
        return *this;
    }

    const msb_exec_request *get() const noexcept { return request_.get(); }

private:
    detail::Handle<msb_exec_request, msb_exec_request_free> request_;
};

// What msb_exec_run captured.
class RunOutput {
public:
    explicit RunOutput(msb_run_output *owned) noexcept : output_(owned) {}
    int exit_code() const noexcept { return msb_run_output_exit_code(output_.get()); }
    bool truncated() const noexcept { return msb_run_output_truncated(output_.get()); }
    // Views valid while this RunOutput lives.
    std::string_view out() const noexcept { return stream(msb_run_output_stdout); }
    std::string_view err() const noexcept { return stream(msb_run_output_stderr); }

private:
    using Accessor = const std::uint8_t *(*)(const msb_run_output *, std::size_t *);
    std::string_view stream(Accessor accessor) const noexcept {
        std::size_t len = 0;
        const std::uint8_t *data = accessor(output_.get(), &len);
        return ByteView(data, len).as_string_view();
    }

    detail::Handle<msb_run_output, msb_run_output_free> output_;
};

// One event of a running process.
class ExecEvent {
public:
    explicit ExecEvent(msb_exec_event *owned) noexcept : event_(owned) {}
    msb_exec_kind kind() const noexcept { return msb_exec_event_kind(event_.get()); }
    std::uint32_t pid() const noexcept { return msb_exec_event_pid(event_.get()); }
    int exit_code() const noexcept { return msb_exec_event_exit_code(event_.get()); }
    // Output of a STDOUT/STDERR event; valid while this event lives.
    ByteView data() const noexcept {
        std::size_t len = 0;
        const std::uint8_t *bytes = msb_exec_event_data(event_.get(), &len);
        return {bytes, len};
    }

private:
    detail::Handle<msb_exec_event, msb_exec_event_free> event_;
};

// A process started with Client::start: stream its events, feed its stdin.
class Exec {
public:
    explicit Exec(msb_exec *owned) noexcept : exec_(owned) {}

    // The next event within `timeout`, or std::nullopt if none arrived in
    // time or the stream has ended (then ended() is true).
    std::optional<ExecEvent> next_event(Timeout timeout = default_timeout) {
        msb_exec_event *raw = nullptr;
        const msb_status st = detail::check("msb_exec_next_event", [&](msb_error **err) {
            return msb_exec_next_event(exec_.get(), timeout.count(), &raw, err);
        });
        if (st == MSB_ENDED) ended_ = true;
        if (st != MSB_OK) return std::nullopt;
        return ExecEvent(raw);
    }

    bool ended() const noexcept { return ended_; }

    void write_stdin(ByteView data, Timeout timeout = default_timeout) {
        detail::check("msb_exec_write_stdin", [&](msb_error **err) {
            return msb_exec_write_stdin(exec_.get(), data.data(), data.size(), timeout.count(), err);
        });
    }

    void close_stdin(Timeout timeout = default_timeout) {
        detail::check("msb_exec_close_stdin", [&](msb_error **err) {
            return msb_exec_close_stdin(exec_.get(), timeout.count(), err);
        });
    }

private:
    detail::Handle<msb_exec, msb_exec_free> exec_;
    bool ended_ = false;
};

// A borrowed directory entry (a view: the listing owns it); valid while its
// Entries lives.
class EntryView {
public:
    explicit EntryView(const msb_fs_entry_view *entry) noexcept : entry_(entry) {}
    std::string_view path() const noexcept { return msb_fs_entry_path(entry_); }
    msb_fs_kind kind() const noexcept { return msb_fs_entry_kind(entry_); }
    std::uint64_t size() const noexcept { return msb_fs_entry_size(entry_); }
    std::uint32_t mode() const noexcept { return msb_fs_entry_mode(entry_); }

private:
    const msb_fs_entry_view *entry_;
};

// A directory listing.
class Entries {
public:
    explicit Entries(msb_fs_entries *owned) noexcept : entries_(owned) {}
    std::size_t size() const noexcept { return msb_fs_entries_len(entries_.get()); }
    EntryView operator[](std::size_t index) const noexcept {
        return EntryView(msb_fs_entries_get(entries_.get(), index));
    }

private:
    detail::Handle<msb_fs_entries, msb_fs_entries_free> entries_;
};

// A connection to one relay. Move-only; closing happens in the destructor.
class Client {
public:
    static Client connect(std::string_view socket_path) {
        msb_client *raw = nullptr;
        detail::check("msb_client_connect", [&](msb_error **err) {
            return msb_client_connect(detail::to_c_string(socket_path).c_str(), nullptr, &raw, err);
        });
        return Client(raw);
    }

    // Runs to completion, keeping at most `capture_limit` bytes per stream.
    RunOutput run(const Command &command, std::size_t capture_limit = std::size_t{1} << 20,
                  Timeout timeout = default_timeout) {
        msb_run_output *raw = nullptr;
        detail::check("msb_exec_run", [&](msb_error **err) {
            return msb_exec_run(client_.get(), command.get(), capture_limit, timeout.count(), &raw, err);
        });
        return RunOutput(raw);
    }

    Exec start(const Command &command, Timeout timeout = default_timeout) {
        msb_exec *raw = nullptr;
        detail::check("msb_exec_start", [&](msb_error **err) {
            return msb_exec_start(client_.get(), command.get(), timeout.count(), &raw, err);
        });
        return Exec(raw);
    }

    Bytes read_file(std::string_view path, Timeout timeout = default_timeout) {
        msb_bytes *raw = nullptr;
        detail::check("msb_fs_read_file", [&](msb_error **err) {
            return msb_fs_read_file(client_.get(), detail::to_c_string(path).c_str(), timeout.count(), &raw,
                                    err);
        });
        return Bytes(raw);
    }

    // `mode` -1 lets the guest choose its default.
    void write_file(std::string_view path, ByteView data, std::int32_t mode = -1,
                    Timeout timeout = default_timeout) {
        detail::check("msb_fs_write_file", [&](msb_error **err) {
            return msb_fs_write_file(client_.get(), detail::to_c_string(path).c_str(), data.data(), data.size(),
                                     mode, timeout.count(), err);
        });
    }

    void mkdir(std::string_view path, Timeout timeout = default_timeout) {
        detail::check("msb_fs_mkdir", [&](msb_error **err) {
            return msb_fs_mkdir(client_.get(), detail::to_c_string(path).c_str(), timeout.count(), err);
        });
    }

    Entries list(std::string_view path, Timeout timeout = default_timeout) {
        msb_fs_entries *raw = nullptr;
        detail::check("msb_fs_list", [&](msb_error **err) {
            return msb_fs_list(client_.get(), detail::to_c_string(path).c_str(), timeout.count(), &raw, err);
        });
        return Entries(raw);
    }

    msb_client *get() const noexcept { return client_.get(); }

private:
    explicit Client(msb_client *owned) noexcept : client_(owned) {}
    detail::Handle<msb_client, msb_client_free> client_;
};

}  // namespace msb

#endif  // MICROSANDBOX_AGENT_HPP
