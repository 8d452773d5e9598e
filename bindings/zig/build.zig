//! Builds the Zig binding of libmicrosandbox_agent.
//!
//!   zig build test                                  (header and library from this repository)
//!   zig build test -Dinclude-dir=DIR -Dlib-dir=DIR  (an installed copy)
//!   zig build test -Dpkg-config=true               (find it through microsandbox_agent.pc)
//!
//! Other packages import the module as "microsandbox".
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});

    const use_pkg_config = b.option(bool, "pkg-config", "Find the header and library with pkg-config (microsandbox_agent.pc) instead of -Dinclude-dir/-Dlib-dir") orelse false;
    const include_dir = dirOption(b, "include-dir", "Directory holding microsandbox_agent.h (default: ../../include)", "../../include");
    const lib_dir = dirOption(b, "lib-dir", "Directory holding libmicrosandbox_agent.so/.a (default: ../../target/release)", "../../target/release");

    // This Zig version has no @cImport: the header is translated in the build
    // graph. Translating a one-line wrapper lets the compiler's include search
    // find the header, wherever -Dinclude-dir or pkg-config put it.
    const wrapper = b.addWriteFiles().add("microsandbox_agent_import.h", "#include <microsandbox_agent.h>\n");
    const translate = b.addTranslateC(.{
        .root_source_file = wrapper,
        .target = target,
        .optimize = optimize,
    });
    if (use_pkg_config) {
        translate.linkSystemLibrary("microsandbox_agent", .{ .use_pkg_config = .force });
    } else {
        translate.addIncludePath(include_dir);
    }
    const c_module = translate.createModule();

    const module = b.addModule("microsandbox", .{
        .root_source_file = b.path("src/microsandbox.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .imports = &.{.{ .name = "c", .module = c_module }},
    });
    if (use_pkg_config) {
        module.linkSystemLibrary("microsandbox_agent", .{ .use_pkg_config = .force });
    } else {
        module.addLibraryPath(lib_dir);
        // So test binaries and examples run without LD_LIBRARY_PATH.
        module.addRPath(lib_dir);
        module.linkSystemLibrary("microsandbox_agent", .{ .use_pkg_config = .no });
    }

    const unit_tests = b.addTest(.{ .name = "unit", .root_module = module });
    const integration_tests = b.addTest(.{
        .name = "integration",
        .root_module = b.createModule(.{
            .root_source_file = b.path("test/integration.zig"),
            .target = target,
            .optimize = optimize,
            .imports = &.{.{ .name = "microsandbox", .module = module }},
        }),
    });
    const readme_tests = b.addTest(.{
        .name = "readme",
        .root_module = b.createModule(.{
            .root_source_file = b.path("readme_test.zig"),
            .target = target,
            .optimize = optimize,
        }),
    });

    const quickstart = b.addExecutable(.{
        .name = "quickstart",
        .root_module = b.createModule(.{
            .root_source_file = b.path("examples/quickstart.zig"),
            .target = target,
            .optimize = optimize,
            .imports = &.{.{ .name = "microsandbox", .module = module }},
        }),
    });
    const run_quickstart = b.addRunArtifact(quickstart);
    run_quickstart.addPassthruArgs();
    b.step("quickstart", "Run examples/quickstart.zig (zig build quickstart [-- SOCKET_PATH], default $MSB_SOCKET)").dependOn(&run_quickstart.step);

    const test_step = b.step("test", "Run the tests and the quickstart against a relay (needs MSB_SOCKET: run under scripts/with-devrelay.sh)");
    var run_integration_tests: *std.Build.Step.Run = undefined;
    for ([_]*std.Build.Step.Compile{ unit_tests, integration_tests, readme_tests }) |tests| {
        const run = b.addRunArtifact(tests);
        // The integration tests talk to a relay: never reuse a cached result.
        run.has_side_effects = true;
        test_step.dependOn(&run.step);
        if (tests == integration_tests) run_integration_tests = run;
    }

    // The README's example, run for real so the documentation cannot rot. It
    // finds the relay through MSB_SOCKET, read when it runs: this build
    // script's own results may be cached across runs, so it must not read
    // per-run environment itself.
    const run_quickstart_test = b.addRunArtifact(quickstart);
    run_quickstart_test.setName("run quickstart against MSB_SOCKET");
    run_quickstart_test.expectExitCode(0);
    run_quickstart_test.has_side_effects = true;
    // Not alongside the integration tests: one of them takes every client
    // slot of the relay for a moment.
    run_quickstart_test.step.dependOn(&run_integration_tests.step);
    test_step.dependOn(&run_quickstart_test.step);
}

/// A directory given as -D<name>=PATH (absolute or relative to the working
/// directory, as users type it) or else `default_sub_path` relative to this
/// build.zig. Made absolute, because the library directory also becomes the
/// test binaries' rpath, which must not depend on where they are run from.
fn dirOption(b: *std.Build, name: []const u8, description: []const u8, default_sub_path: []const u8) std.Build.LazyPath {
    const arena = b.graph.arena;
    const cwd = std.process.currentPathAlloc(b.graph.io, arena) catch |err|
        std.debug.panic("cannot read the working directory: {t}", .{err});
    const dir = if (b.option([]const u8, name, description)) |given|
        given
    else
        b.root.joinString(arena, default_sub_path) catch @panic("OOM");
    const absolute = std.Io.Dir.path.resolveAlloc(arena, &.{ cwd, dir }) catch @panic("OOM");
    return b.graph.cwdRelativePath(absolute);
}
