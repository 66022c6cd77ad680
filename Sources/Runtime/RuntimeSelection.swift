import LinuxSupport
import Overlay

/// Picks the runtime: `auto` takes Apptainer, else Singularity, when on PATH, native otherwise.
public enum RuntimeSelection {
    public static func make(_ kind: RuntimeKind) throws -> any Runtime {
        switch kind {
        case .native:
            return NativeRuntime()
        case .apptainer, .singularity:
            guard let path = findExecutable(kind.rawValue) else {
                let name = kind == .apptainer ? "Apptainer" : "Singularity"
                throw RuntimeError.unavailable("\(name) is missing: no \(kind.rawValue) on PATH; install it (or load its module), or use --runtime native")
            }
            return SingularityRuntime(executable: path)
        case .auto:
            if let path = findExecutable("apptainer") ?? findExecutable("singularity") {
                return SingularityRuntime(executable: path)
            }
            return NativeRuntime()
        }
    }
}
