import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The container root a stack sits on: what `-c` names.
public enum ContainerReference: Equatable, Sendable, CustomStringConvertible {
    /// A SIF file: its squashfs system partition is the root.
    case sif(String)
    /// A squashfs image.
    case squashfs(String)
    /// A sandbox directory (an unpacked root filesystem).
    case sandbox(String)
    /// The host itself, `/`: the overlay sits on top of this machine.
    case host

    public var path: String {
        switch self {
        case let .sif(p), let .squashfs(p), let .sandbox(p): return p
        case .host: return "/"
        }
    }

    public var description: String {
        switch self {
        case let .sif(p): return "SIF \(p)"
        case let .squashfs(p): return "squashfs \(p)"
        case let .sandbox(p): return "sandbox \(p)"
        case .host: return "host /"
        }
    }

    /// Recognises what `path` is by looking at it: `/` is the host, a directory a sandbox, a
    /// file starting with the SIF magic a SIF, one with the squashfs magic `hsqs` a squashfs.
    public static func detect(_ path: String) throws -> ContainerReference {
        var info = stat()
        guard stat(path, &info) == 0 else { throw OverlayError.containerNotFound(path) }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            if let resolved = realpath(path, nil) {
                defer { free(resolved) }
                if String(cString: resolved) == "/" { return .host }
            }
            return .sandbox(path)
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw OverlayError.unknownContainer(path) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw OverlayError.message("container '\(path)': cannot read it: \(Errno.last)") }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &head, head.count)
        if count >= 4, head[0] == 0x68, head[1] == 0x73, head[2] == 0x71, head[3] == 0x73 { return .squashfs(path) }
        // SIF: "#!/usr/bin/env run-singularity\n" launch script, then magic "SIF_MAGIC" at 32.
        if count >= 41, Array(head[32..<41]) == Array("SIF_MAGIC".utf8) { return .sif(path) }
        throw OverlayError.unknownContainer(path)
    }
}
