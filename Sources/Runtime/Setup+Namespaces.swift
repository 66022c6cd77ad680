import LinuxSupport

#if canImport(Glibc)
import Glibc
#endif

/// The setup process's first stage: the namespaces, the staging tmpfs and (FUSE mode, when
/// the container is the host root) the copy of `/` that fuse-overlayfs reads.
extension Setup {
    func enterNamespaces() throws {
        switch plan.mode {
        case .kernel:
            do { try Mounts.unshare(.mount) } catch {
                throw Failure(text: "cannot make a private mount namespace: \(error.errno)")
            }
        case .fuse:
            do { try Mounts.unshare([.user, .mount]) } catch {
                throw Failure(text: "cannot make a user namespace (\(error.errno)): running without root needs user namespaces; an administrator can enable them (sysctl user.max_user_namespaces), or run as root")
            }
            // The user stays themselves inside, so every file written keeps their uid on disk.
            try writeFile("/proc/self/setgroups", "deny")
            try writeFile("/proc/self/uid_map", "\(plan.identity.uid) \(plan.identity.uid) 1\n")
            try writeFile("/proc/self/gid_map", "\(plan.identity.gid) \(plan.identity.gid) 1\n")
        }
        do { try Mounts.mount(nil, on: "/", flags: UInt(MS_REC | MS_PRIVATE)) } catch {
            throw Failure(text: "cannot make the mounts private: \(error.errno)")
        }
        do { try Mounts.mount("tmpfs", on: plan.staging, type: "tmpfs", flags: UInt(MS_NOSUID | MS_NODEV), options: "mode=0755") } catch {
            throw Failure(text: "cannot mount a tmpfs on \(plan.staging): \(error.errno)")
        }
        if let hostCopy = plan.hostCopy {
            // Before any FUSE mount: the copy holds none of them, and as / is private, none made
            // later under the staging tmpfs shows in it. Recursive, as a user namespace may not
            // bind / without its (locked) submounts. Then the staging tmpfs comes off the copy,
            // which shows the host's own directory there.
            try makeDirectories(hostCopy)
            do { try Mounts.mount("/", on: hostCopy, flags: UInt(MS_BIND | MS_REC)) } catch {
                throw Failure(text: "cannot bind / to \(hostCopy) for the overlay: \(error.errno)")
            }
            do { try Mounts.unmount(hostCopy + plan.staging, flags: Int32(MNT_DETACH)) } catch {
                throw Failure(text: "cannot unmount \(hostCopy + plan.staging): \(error.errno)")
            }
        }
    }

    func writeFile(_ path: String, _ text: String) throws {
        let fd: OwnedDescriptor
        do { fd = try OwnedDescriptor(opening: path, O_WRONLY) } catch {
            throw Failure(text: "cannot open \(path): \(error.errno)")
        }
        do { try IO.writeAll(fd.rawValue, Array(text.utf8), path: path) } catch {
            throw Failure(text: "cannot write \(path): \(error.errno)")
        }
    }

    /// mkdir -p (mode 0755) of a mount point.
    func makeDirectories(_ path: String) throws {
        do { try Mounts.makeDirectories(path) } catch {
            throw Failure(text: "cannot make the mount point \(error.path): \(error.errno)")
        }
    }
}
