import Overlay

/// The embedded runtime: kernel loop + overlayfs as root, fuse2fs + fuse-overlayfs in a user
/// namespace otherwise. (Implemented by the native-runtime work.)
public struct NativeRuntime: Runtime {
    public init() {}
    public var name: String { "native" }
    public func plan(for job: Job) throws -> [String] {
        throw RuntimeError.unavailable("the native runtime is not built yet")
    }
    public func run(_ job: Job) throws -> Int32 {
        throw RuntimeError.unavailable("the native runtime is not built yet")
    }
}
