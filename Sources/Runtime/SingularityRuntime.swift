import Overlay

/// Runs a job with Singularity/Apptainer: builds its command line and execs it.
/// (Implemented by the Singularity-runtime work.)
public struct SingularityRuntime: Runtime {
    public let executable: String
    public init(executable: String) { self.executable = executable }
    public var name: String { String(executable.split(separator: "/").last ?? "singularity") }
    public func plan(for job: Job) throws -> [String] {
        throw RuntimeError.unavailable("the Singularity runtime is not built yet")
    }
    public func run(_ job: Job) throws -> Int32 {
        throw RuntimeError.unavailable("the Singularity runtime is not built yet")
    }
}
