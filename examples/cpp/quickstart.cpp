// C++ quickstart: the C quickstart's steps through the RAII wrappers in
// microsandbox_agent.hpp, checking each result so it doubles as a test.
//
//   c++ -std=c++17 -Wall -Wextra -Werror -Iexamples/cpp examples/cpp/quickstart.cpp
//       $(pkg-config --cflags --libs microsandbox_agent) -o quickstart-cpp
//   ./quickstart-cpp /path/to/agent.sock
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>

#include "microsandbox_agent.hpp"

namespace {

// Throws with `what` unless `ok`: the example's checks must stop it loudly.
void expect(bool ok, std::string_view what) {
    if (!ok) throw std::runtime_error("check failed: " + std::string(what));
}

void run_echo(msb::Client &client) {
    const msb::RunOutput out = client.run(msb::Command("echo").arg("hello from C++"));
    std::cout << "exec: " << out.out() << "exit code: " << out.exit_code() << "\n";
    expect(out.out() == "hello from C++\n", "echo's stdout");
    expect(out.exit_code() == 0, "echo's exit code");
}

// Streams a process's events, feeding its stdin, until it exits.
void stream_cat(msb::Client &client) {
    msb::Exec exec = client.start(msb::Command("sh").arg("-c").arg("cat; echo done >&2; exit 3"));
    exec.write_stdin(std::string_view("piped through cat\n"));
    exec.close_stdin();
    std::string out, err;
    int exit_code = -1;
    while (auto event = exec.next_event()) {
        switch (event->kind()) {
        case MSB_EXEC_STDOUT: out += event->data().as_string_view(); break;
        case MSB_EXEC_STDERR: err += event->data().as_string_view(); break;
        case MSB_EXEC_EXITED: exit_code = event->exit_code(); break;
        default: break;
        }
    }
    std::cout << "streamed: stdout " << out.size() << " bytes, stderr \"" << err.substr(0, err.size() - 1)
              << "\", exit code " << exit_code << "\n";
    expect(exec.ended(), "the event stream ends after the exit event");
    expect(out == "piped through cat\n", "cat echoes its stdin");
    expect(err == "done\n", "stderr is kept apart from stdout");
    expect(exit_code == 3, "the exit code is reported");
}

void file_round_trip(msb::Client &client) {
    const std::string_view path = "/tmp/msb-quickstart-cpp.txt";
    const std::string_view content = "written through the C++ wrappers\n";
    client.mkdir("/tmp");
    client.write_file(path, content, 0644);
    const msb::Bytes data = client.read_file(path);
    std::cout << "read back " << data.view().size() << " bytes: " << data.as_string_view();
    expect(data.as_string_view() == content, "file content survives the round trip");

    const msb::Entries entries = client.list("/tmp");
    bool found = false;
    std::cout << "/tmp holds " << entries.size() << " entries\n";
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const msb::EntryView entry = entries[i];
        std::cout << "  " << entry.path() << " " << entry.size() << " bytes\n";
        if (entry.path() == path) {
            found = true;
            expect(entry.size() == content.size(), "listed size matches");
            expect(entry.kind() == MSB_FS_KIND_FILE, "listed kind is a file");
        }
    }
    expect(found, "the written file is listed");

    // A failure arrives as an exception carrying the status code.
    try {
        client.read_file("/tmp/does-not-exist");
        expect(false, "reading a missing file throws");
    } catch (const msb::Error &e) {
        std::cout << "missing file: " << e.what() << " (" << msb_status_str(e.code()) << ")\n";
        expect(e.code() < 0, "the error carries a negative status");
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::cerr << "usage: " << argv[0] << " RELAY_SOCKET_PATH\n";
        return 2;
    }
    std::cout << "libmicrosandbox_agent " << msb_version() << " (header " << MSB_VERSION_MAJOR << "."
              << MSB_VERSION_MINOR << "." << MSB_VERSION_PATCH << ")\n";
    try {
        msb::Client client = msb::Client::connect(argv[1]);
        run_echo(client);
        stream_cat(client);
        file_round_trip(client);
    } catch (const std::exception &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return EXIT_SUCCESS;
}
