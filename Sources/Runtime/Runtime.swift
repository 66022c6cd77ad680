import LinuxSupport
import Overlay

/// Something that can run a ``Job``: mount its overlay stack on its container and run its
/// command. Two implementations: ``NativeRuntime`` (kernel or FUSE mounts, this process) and
/// ``SingularityRuntime`` (builds Singularity's/Apptainer's command line and execs it).
public protocol Runtime: Sendable {
    /// `native`, `singularity`, `apptainer`.
    var name: String { get }
    /// What `--dry-run` prints: the mounts and the command, one step a line.
    func plan(for job: Job) throws -> [String]
    /// Runs the job and returns the status to exit with (128+N when killed by signal N).
    /// A runtime that execs another program does not return on success.
    func run(_ job: Job) throws -> Int32
}

/// `--runtime` / `$OVERLAY_RUNTIME`.
public enum RuntimeKind: String, CaseIterable, Sendable {
    case auto, native, singularity, apptainer
}

public enum RuntimeError: UserFacingError, Equatable, Sendable {
    case unavailable(String)
    case failed(String)

    public var description: String {
        switch self {
        case let .unavailable(text), let .failed(text): return text
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

func environmentValue(_ name: String) -> String? {
    guard let value = getenv(name) else { return nil }
    return String(cString: value)
}
