import Foundation
import TestSupport

/// A stand-in for `apptainer`/`singularity` (neither can be installed here): a shell script
/// that records the arguments it was given, one per line, in `<name>.argv`, the
/// `APPTAINER_*`/`SINGULARITY_*` variables it saw in `<name>.env`, its pid in `<name>.pid`,
/// and exits with `$STANDIN_STATUS` (0 by default). With `STANDIN_RUN=1` it then runs the
/// command it was given (the words after the image), as Singularity would inside the container,
/// and exits with its status.
///
/// It lets the tests check our side of the interface only: the command line we build and hand
/// over with exec, and what we do before; not what Singularity does with it.
struct SingularityStandIn {
    let directory: TempDirectory
    var path: String { directory.path }

    init(_ names: [String] = ["apptainer"]) throws {
        directory = try TempDirectory("standin")
        let script = """
            #!/bin/sh
            name=$(/usr/bin/basename "$0")
            record=\(directory.path)
            printf '%s\\n' "$@" > "$record/$name.argv.tmp"
            /usr/bin/env | /bin/grep -E '^(APPTAINER|SINGULARITY)' | /usr/bin/sort > "$record/$name.env"
            echo $$ > "$record/$name.pid"
            /bin/mv "$record/$name.argv.tmp" "$record/$name.argv"
            if [ "${STANDIN_RUN:-0}" = 1 ]; then
                # The words after the image: exec, --overlay X..., -B X..., IMAGE, then the command.
                shift
                while [ $# -gt 0 ]; do
                    case "$1" in
                        --overlay|-B) shift 2 ;;
                        --*) shift ;;
                        *) shift; break ;;
                    esac
                done
                exec "$@"
            fi
            exit "${STANDIN_STATUS:-0}"

            """
        for name in names {
            let file = directory.file(name)
            try script.write(toFile: file, atomically: true, encoding: .utf8)
            chmod(file, 0o755)
        }
    }

    /// The arguments `name` was started with (after its own name), or nil if it never ran.
    func arguments(_ name: String = "apptainer") -> [String]? {
        guard let text = try? String(contentsOfFile: directory.file("\(name).argv"), encoding: .utf8) else { return nil }
        return text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    func environment(_ name: String = "apptainer") -> [String] {
        let text = (try? String(contentsOfFile: directory.file("\(name).env"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init)
    }

    func pid(_ name: String = "apptainer") -> Int32? {
        (try? String(contentsOfFile: directory.file("\(name).pid"), encoding: .utf8))
            .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// Whether any stand-in was started at all.
    var started: Bool {
        ((try? directory.listing()) ?? []).contains { $0.hasSuffix(".argv") || $0.hasSuffix(".argv.tmp") }
    }
}

/// A place for one test's images and files, with an environment that sees only the stand-in on
/// PATH and no configuration file but the ones the test writes.
struct SingularityScene {
    let directory: TempDirectory
    let standIn: SingularityStandIn

    init(standIns: [String] = ["apptainer"]) throws {
        directory = try TempDirectory("singularity")
        standIn = try SingularityStandIn(standIns)
        try FileManager.default.createDirectory(atPath: directory.file("config"), withIntermediateDirectories: true)
    }

    func file(_ name: String) -> String { directory.file(name) }

    /// PATH holds only the stand-ins, so no real Singularity on this machine can interfere.
    func environment(_ extra: [String: String] = [:]) -> [String: String] {
        var env = ["PATH": standIn.path, "HOME": directory.path, "XDG_CONFIG_HOME": directory.file("config"),
                   "OVERLAY_SYSTEM_CONFIG": directory.file("system-config"), "LANG": "C.UTF-8"]
        for (key, value) in extra { env[key] = value }
        return env
    }

    /// An ext3 overlay with upper/ and work/ (mke2fs + debugfs).
    @discardableResult
    func overlay(_ name: String, files: [String: String] = [:]) throws -> String {
        try FixtureImage.ext3(at: file(name), mebibytes: 16, files: files)
        return file(name)
    }

    /// A file Singularity would take for a SIF (its launch line and magic; nothing after).
    @discardableResult
    func sif(_ name: String) throws -> String {
        let header = "#!/usr/bin/env run-singularity\n" + "SIF_MAGIC" + String(repeating: "\0", count: 32)
        try header.write(toFile: file(name), atomically: true, encoding: .utf8)
        return file(name)
    }

    /// Runs one of our built executables on a terminal of its own (script(1) gives it a pty), as
    /// mount-overlay needs one.
    func runOnTerminal(_ tool: String, _ arguments: [String]) throws -> ProcessResult {
        let line = ([product(tool)] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        return try TestSupport.run(["/usr/bin/script", "-qec", line, "/dev/null"], environment: environment(),
                                   currentDirectory: directory.path)
    }

    /// Runs one of our built executables in the scene's directory with its environment.
    func run(_ tool: String, _ arguments: [String], environment extra: [String: String] = [:]) throws -> ProcessResult {
        try TestSupport.run([product(tool)] + arguments, environment: environment(extra),
                            currentDirectory: directory.path)
    }
}

/// Another process holding an OFD lock on a file, as Apptainer holds one on an overlay it has
/// mounted: python3 takes it with fcntl(F_OFD_SETLK) and keeps it until `release()`.
final class LockHolder: @unchecked Sendable {
    private let process: SpawnedProcess

    init(_ path: String, write: Bool) throws {
        let script = """
            import fcntl, os, struct, sys
            F_OFD_SETLK = 37
            fd = os.open(sys.argv[1], os.O_RDWR if sys.argv[2] == "write" else os.O_RDONLY)
            kind = fcntl.F_WRLCK if sys.argv[2] == "write" else fcntl.F_RDLCK
            # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), padding
            fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqii", kind, os.SEEK_SET, 0, 0, 0, 0))
            print("locked", flush=True)
            sys.stdin.read()
            """
        process = try SpawnedProcess([python3, "-c", script, path, write ? "write" : "read"], stdin: .pipe)
        let line = process.readLine(timeout: 30) ?? ""
        guard line.hasPrefix("locked") else {
            let result = process.wait(timeout: 5)
            throw StandInError(description: "python3 could not lock \(path): \(line) \(result.stderr)")
        }
    }

    func release() {
        process.closeStdin()
        _ = process.wait(timeout: 30)
    }

    deinit { release() }
}

struct StandInError: Error, CustomStringConvertible {
    let description: String
}

/// The system's python3 (not a shim that needs more of PATH than the tests give).
let python3: String = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : (which("python3") ?? "python3")
