import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The setup process's second stage: the images and the container (kernel loop mounts, or
/// FUSE drivers, see Setup+Drivers.swift), the overlay on them and the binds on it.
extension Setup {
    mutating func mountStack() throws {
        let scratch = plan.scratch.map { [$0 + "/upper", $0 + "/work"] } ?? []
        for dir in [plan.session, plan.session + "/proc", plan.root] + plan.images.map(\.mountPoint) + [plan.squashfs?.mountPoint].compactMap({ $0 }) + scratch {
            try makeDirectories(dir)
        }
        // The image and container drivers do not depend on each other: all start at once.
        var drivers: [Driver] = []
        for (index, image) in plan.images.enumerated() {
            switch plan.mode {
            case .kernel:
                // The loop device reads the image through the descriptor that holds its lock:
                // the lock then lasts until the device is freed, after the last unmount, even
                // when this process is killed and the kernel tears the namespace down later.
                let lock = index < plan.lockDescriptors.count ? plan.lockDescriptors[index] : nil
                try mountLoop(image.path, at: image.mountPoint, type: "ext3", readOnly: image.readOnly, backing: lock,
                              flags: UInt(MS_NOSUID | MS_NODEV), data: "errors=remount-ro")
            case .fuse:
                drivers.append(Driver(argv: plan.fuseImageCommand(image), mountPoint: image.mountPoint,
                                      what: "overlay '\(image.path)'"))
            }
        }
        if let squashfs = plan.squashfs {
            switch plan.mode {
            case .kernel:
                try mountLoop(squashfs.path, at: squashfs.mountPoint, type: "squashfs", readOnly: true,
                              offset: squashfs.offset, size: squashfs.size, flags: UInt(MS_NOSUID | MS_NODEV), data: nil)
            case .fuse:
                var argv = ["squashfuse", "-f"]
                if squashfs.offset > 0 { argv += ["-o", "offset=\(squashfs.offset)"] }
                drivers.append(Driver(argv: argv + [squashfs.path, squashfs.mountPoint], mountPoint: squashfs.mountPoint,
                                      what: "container '\(squashfs.path)'"))
            }
        }
        if !drivers.isEmpty { try startDaemons(drivers) }
        // Mount points for the binds, in the topmost (empty) lower layer.
        for bind in plan.binds {
            let target = plan.session + bind.destination
            if bind.isDirectory {
                try makeDirectories(target)
            } else {
                try makeDirectories(String(target[..<target.lastIndex(of: "/")!]))
                _ = try? OwnedDescriptor(opening: target, O_CREAT | O_WRONLY)
            }
        }
        let readOnly = plan.upperDir == nil
        switch plan.mode {
        case .kernel:
            do {
                try Mounts.mount("overlay", on: plan.root, type: "overlay", flags: readOnly ? UInt(MS_RDONLY) : 0,
                                 options: plan.overlayOptions)
            } catch {
                throw Failure(text: "cannot mount the overlay (\(plan.overlayOptions)): \(error.errno)")
            }
        case .fuse:
            if plan.userOverlay != .fuseOverlayfs {
                do {
                    try Mounts.mount("overlay", on: plan.root, type: "overlay", flags: readOnly ? UInt(MS_RDONLY) : 0,
                                     options: plan.userKernelOverlayOptions)
                    break
                } catch {
                    // The kernel's log says why; fuse-overlayfs gives the same view.
                    if plan.userOverlay == .kernel {
                        throw Failure(text: "cannot mount the kernel's overlay in the user namespace (\(plan.userKernelOverlayOptions)): \(error.errno); unset OVERLAY_FUSE_STACK to fall back to fuse-overlayfs")
                    }
                }
            }
            try startDaemons([Driver(argv: ["fuse-overlayfs", "-f", "-o", plan.fuseOverlayOptions, plan.root],
                                     mountPoint: plan.root, what: "the overlay")])
        }
        for bind in plan.binds {
            try mountBind(bind)
        }
    }

    func mountBind(_ bind: NativePlan.BindMount) throws {
        let target = plan.root + bind.destination
        do { try Mounts.mount(bind.source, on: target, flags: UInt(MS_BIND | MS_REC)) } catch {
            throw Failure(text: "cannot bind \(bind.source) to \(bind.destination): \(error.errno)")
        }
        guard bind.readOnly else { return }
        var info = statvfs()
        statvfs(target, &info)
        // Keep the flags the bind has (a user namespace may not clear them).
        // statvfs ST_* bits (glibc's enum) and the mount flags they stand for.
        let kept: [(UInt, Int)] = [(2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME),
                                   (2048, MS_NODIRATIME), (4096, MS_RELATIME)]
        var flags = UInt(MS_BIND | MS_REMOUNT | MS_RDONLY)
        for (bit, flag) in kept where UInt(info.f_flag) & bit != 0 { flags |= UInt(flag) }
        do { try Mounts.mount(nil, on: target, flags: flags) } catch {
            throw Failure(text: "cannot make the bind of \(bind.source) read-only: \(error.errno)")
        }
    }

    func mountLoop(_ path: String, at target: String, type: String, readOnly: Bool, offset: UInt64 = 0, size: UInt64 = 0,
                   backing: Int32? = nil, flags: UInt, data: String?) throws {
        let device: LoopDevice
        do {
            if let backing {
                device = try Mounts.attachLoop(backing: backing, path: path, readOnly: readOnly)
            } else {
                device = try Mounts.attachLoop(path, readOnly: readOnly, offset: offset, size: size)
            }
        } catch {
            throw Failure(text: "cannot attach \(path) to a loop device: \(error.errno)")
        }
        // The device stays attached while it is open or mounted; autoclear frees it after.
        do {
            try Mounts.mount(device.path, on: target, type: type, flags: flags | (readOnly ? UInt(MS_RDONLY) : 0), options: data)
        } catch {
            throw Failure(text: "cannot mount \(path) (\(type)): \(error.errno)")
        }
        device.descriptor.close()
    }
}
