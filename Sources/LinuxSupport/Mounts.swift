internal import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// Namespaces, mounts and loop devices.
public enum Mounts {
    public struct Namespaces: OptionSet, Sendable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let mount = Namespaces(rawValue: clinux_flag_newns())
        public static let user = Namespaces(rawValue: clinux_flag_newuser())
        public static let pid = Namespaces(rawValue: clinux_flag_newpid())
    }

    /// unshare(2).
    public static func unshare(_ namespaces: Namespaces) throws(SystemError) {
        guard clinux_unshare(namespaces.rawValue) == 0 else { throw SystemError("unshare") }
    }

    /// setns(2): `fd` names a namespace of the kinds in `namespaces`.
    public static func enter(_ fd: Int32, _ namespaces: Namespaces) throws(SystemError) {
        guard clinux_setns(fd, namespaces.rawValue) == 0 else { throw SystemError("setns") }
    }

    /// mount(2); the error names `target`.
    public static func mount(_ source: String?, on target: String, type: String? = nil, flags: UInt = 0,
                             options: String? = nil) throws(SystemError) {
        guard Glibc.mount(source, target, type, flags, options) == 0 else { throw SystemError("mount", path: target) }
    }

    /// umount2(2).
    public static func unmount(_ target: String, flags: Int32 = 0) throws(SystemError) {
        guard umount2(target, flags) == 0 else { throw SystemError("unmount", path: target) }
    }

    /// Attaches `path` to a free loop device (autoclear; read-only when asked), limited to
    /// [offset, offset + size) (size 0: to the end). Returns the open device and its path: the
    /// device stays attached while it is open or mounted, and is freed after.
    public static func attachLoop(_ path: String, readOnly: Bool, offset: UInt64 = 0,
                                  size: UInt64 = 0) throws(SystemError) -> LoopDevice {
        var number: Int32 = -1
        let fd = clinux_loop_attach(path, readOnly ? 1 : 0, offset, size, &number)
        guard fd >= 0 else { throw SystemError("attach to a loop device", path: path, errno: Errno(rawValue: -fd)) }
        return LoopDevice(descriptor: OwnedDescriptor(adopting: fd), path: "/dev/loop\(number)")
    }

    /// Attaches the file open as `backing` (its access mode matching `readOnly`) to a free loop
    /// device with autoclear. The device holds that open file description until it is freed,
    /// so an OFD lock held through it lasts as long as the device: a lock that must not be
    /// released before the last mount of the file is gone belongs on this descriptor.
    public static func attachLoop(backing: Int32, path: String, readOnly: Bool) throws(SystemError) -> LoopDevice {
        var number: Int32 = -1
        let fd = clinux_loop_attach_fd(backing, path, readOnly ? 1 : 0, 0, 0, &number)
        guard fd >= 0 else { throw SystemError("attach to a loop device", path: path, errno: Errno(rawValue: -fd)) }
        return LoopDevice(descriptor: OwnedDescriptor(adopting: fd), path: "/dev/loop\(number)")
    }

    /// mkdir -p with mode 0755.
    public static func makeDirectories(_ path: String) throws(SystemError) {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && Glibc.errno != EEXIST { throw SystemError("make the directory", path: current) }
        }
    }
}

/// An attached loop device, held open: it stays attached while open or mounted (autoclear).
/// Frozen so that other modules may take it apart (close `descriptor` once it is mounted).
@frozen
public struct LoopDevice: ~Copyable {
    public var descriptor: OwnedDescriptor
    public var path: String
}
