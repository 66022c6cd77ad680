import Foundation
import Testing
import TestSupport
@testable import Overlay
@testable import Runtime

/// The native runtime's plan, worked out before anything is mounted: the overlayfs stacking
/// order (Apptainer's) and what --dry-run shows. Real mounts are in EndToEndTests.
@Suite struct NativePlanTests {
    let directory: TempDirectory
    init() throws {
        directory = try TempDirectory("plan")
        for name in ["a.ext3", "b.ext3", "c.ext3"] { _ = FileManager.default.createFile(atPath: directory.file(name), contents: nil) }
    }

    func plan(_ overlays: [String], mode: NativePlan.Mode = .kernel, command: JobCommand = .argv(["true"]),
              container: ContainerReference = .host, environment: [String: String] = [:]) throws -> NativePlan {
        let job = Job(stack: try OverlayStack(arguments: overlays.map { directory.file($0) }), container: container,
                      binds: [Bind(source: "/etc", destination: "/mnt/etc", readOnly: true)],
                      command: command, workingDirectory: directory.path)
        return try NativePlan.make(for: job, mode: mode, identity: .init(uid: 1000, gid: 1000, groups: [], change: false),
                                   environment: ["HOME": directory.path, "SHELL": "/bin/zsh"].merging(environment) { $1 })
    }

    @Test func laterReadOnlyLayersSitAboveEarlierOnesAndTheFirstIsTheUpper() throws {
        let plan = try plan(["a.ext3", "b.ext3", "c.ext3:ro"])
        let s = plan.staging
        #expect(plan.lowerDirs == ["\(s)/session", "\(s)/image2/upper", "\(s)/image1/upper", "/"])
        #expect(plan.upperDir == "\(s)/image0/upper")
        #expect(plan.workDir == "\(s)/image0/work")
        #expect(plan.images.map(\.readOnly) == [false, true, true])
    }

    @Test func aReadOnlyFirstOverlayMeansNoUpper() throws {
        let plan = try plan(["a.ext3:ro", "b.ext3"])
        #expect(plan.upperDir == nil)
        #expect(plan.lowerDirs.dropFirst().first == "\(plan.staging)/image1/upper")
        #expect(plan.lines.contains { $0.hasPrefix("mount -t overlay -o ro,") })
    }

    @Test func bindsAreSingularitysThenTheWorkingDirectoryThenB() throws {
        let plan = try plan(["a.ext3"])
        // $HOME is the working directory here: bound once.
        #expect(plan.binds.map(\.destination) == ["/sys", "/dev", "/tmp", directory.path, "/mnt/etc"])
        #expect(plan.binds.last?.readOnly == true)
    }

    @Test func theShellIsShellThenBashThenSh() throws {
        let plan = try plan(["a.ext3"], command: .interactiveShell)
        #expect(plan.interactive)
        #expect(plan.command == ["/bin/zsh", "/bin/bash", "/bin/sh"])
        #expect(plan.environment["PS1"]?.hasPrefix("[overlay a.ext3] ") == true)
    }

    @Test func pathsWithCommasAndColonsAreEscapedForOverlayfs() {
        #expect(NativePlan.escapeOverlayPath("/a,b:c\\d") == "/a\\,b\\:c\\\\d")
    }

    @Test func theUnprivilegedPlanUsesTheFUSEDrivers() throws {
        let fuse = try plan(["a.ext3", "b.ext3"], mode: .fuse)
        let lines = fuse.lines
        #expect(lines.first?.hasPrefix("unshare user namespace (uid 1000 -> 1000, gid 1000 -> 1000)") == true)
        // The writable image (no ext3 image here: an empty file): fuse2fs; the read-only one:
        // the built-in driver (this executable).
        #expect(lines.contains { $0.hasPrefix("fuse2fs \(directory.file("a.ext3")) ") && $0.hasSuffix("-o fakeroot" + NativePlan.fuse2fsCaching) })
        #expect(lines.contains { $0.hasSuffix(" --serve-image-read-only \(directory.file("b.ext3")) \(fuse.staging)/image1 (the built-in read-only driver)") }, "\(lines)")
        #expect(!lines.contains { $0.hasPrefix("fuse2fs \(directory.file("b.ext3")) ") })
        #expect(lines.contains { $0.hasPrefix("fuse-overlayfs -o noacl,") })
    }

    /// The writable image goes to the built-in driver's writable mode when it is an ext3 image
    /// it writes; to fuse2fs when it is not (an ext4 image), when the run takes job snapshots
    /// (cut through fuse2fs) and when OVERLAY_IMAGE_DRIVER=fuse2fs.
    @Test(.requires(executable: "mke2fs"))
    func theWritableImageGoesToTheBuiltinDriverWhereItCanWriteIt() throws {
        try FixtureImage.ext3(at: directory.file("w.ext3"), mebibytes: 16)
        let made = try run(["mke2fs", "-q", "-t", "ext4", "-F", directory.file("w.ext4"), "16M"])
        #expect(made.status == 0, "\(made)")
        let ext3 = try plan(["w.ext3", "b.ext3:ro"], mode: .fuse)
        #expect(ext3.writableDriver == .builtin)
        #expect(ext3.fuseImageCommand(ext3.images[0]).dropFirst() == ["--serve-image-writable", directory.file("w.ext3"), "\(ext3.staging)/image0"])
        #expect(ext3.lines.contains { $0.hasSuffix(" --serve-image-writable \(directory.file("w.ext3")) \(ext3.staging)/image0 (the built-in writable driver)") }, "\(ext3.lines)")
        #expect(!ext3.needsFuse2fs)
        let ext4 = try plan(["w.ext4"], mode: .fuse)
        #expect(ext4.writableDriver == .fuse2fs)
        #expect(ext4.fuseImageCommand(ext4.images[0]).first == "fuse2fs")
        let asked = try plan(["w.ext3"], mode: .fuse, environment: ["OVERLAY_IMAGE_DRIVER": "fuse2fs"])
        #expect(asked.writableDriver == .fuse2fs && asked.needsFuse2fs)
        var job = Job(stack: try OverlayStack(arguments: [directory.file("w.ext3")]), container: .host, binds: [],
                      command: .argv(["true"]), workingDirectory: directory.path)
        job.snapshots = JobSnapshotSettings(directory: directory.path, everySeconds: nil, keep: nil, id: "run")
        let snapshotting = try NativePlan.make(for: job, mode: .fuse, identity: .init(uid: 1000, gid: 1000, groups: [], change: false),
                                               environment: ["HOME": directory.path])
        #expect(snapshotting.writableDriver == .fuse2fs && snapshotting.needsFuse2fs)
        // Root's plan mounts with the kernel.
        #expect(try plan(["w.ext3"]).writableDriver == nil)
    }

    @Test func readOnlyImagesCanBeMountedByFuse2fsInstead() throws {
        let builtin = try plan(["a.ext3:ro"], mode: .fuse)
        #expect(builtin.readOnlyDriver == .builtin)
        #expect(builtin.fuseImageCommand(builtin.images[0]).dropFirst() == ["--serve-image-read-only", directory.file("a.ext3"), "\(builtin.staging)/image0"])
        // The driver is this very executable.
        let ownExecutable = try #require(builtin.driverExecutable)
        #expect(FileManager.default.isExecutableFile(atPath: ownExecutable), "\(ownExecutable)")
        #expect(!builtin.needsFuse2fs)
        let old = try plan(["a.ext3:ro"], mode: .fuse, environment: ["OVERLAY_IMAGE_DRIVER": "fuse2fs"])
        #expect(old.readOnlyDriver == .fuse2fs)
        #expect(old.needsFuse2fs)
        #expect(old.lines.contains { $0.hasPrefix("fuse2fs \(directory.file("a.ext3")) ") && $0.hasSuffix("-o fakeroot,ro" + NativePlan.fuse2fsCaching) })
        #expect(throws: RuntimeError.failed("OVERLAY_IMAGE_DRIVER is 'fuse3': give builtin or fuse2fs")) {
            try self.plan(["a.ext3:ro"], mode: .fuse, environment: ["OVERLAY_IMAGE_DRIVER": "fuse3"])
        }
        // Root's plan mounts with the kernel and ignores it.
        #expect(try plan(["a.ext3:ro"], environment: ["OVERLAY_IMAGE_DRIVER": "fuse2fs"]).readOnlyDriver == nil)
    }

    @Test func fuseOverlayfsReadsTheHostRootWithoutTheRunsMounts() throws {
        let fuse = try plan(["a.ext3"], mode: .fuse)
        // A copy of / made before the run mounts anything, not / itself (fuse-overlayfs would
        // cross into the run's own mounts); the kernel's overlayfs stays on one mount per layer.
        #expect(fuse.hostCopy == fuse.staging + "/host")
        #expect(fuse.lowerDirs.last == fuse.staging + "/host")
        #expect(fuse.lines.contains("mount --rbind / \(fuse.staging)/host, umount -l \(fuse.staging)/host\(fuse.staging)"))
        let kernel = try plan(["a.ext3"])
        #expect(kernel.hostCopy == nil)
        #expect(kernel.lowerDirs.last == "/")
    }

    @Test func overTheHostRootTheUnprivilegedStackIsFuseOverlayfs() throws {
        // `/` cannot be a layer of the kernel's overlay in a user namespace (locked submounts).
        let plan = try plan(["a.ext3:ro"], mode: .fuse)
        #expect(plan.userOverlay == .fuseOverlayfs)
        #expect(plan.lines.contains { $0.hasPrefix("fuse-overlayfs -o ro,noacl,") })
    }

    @Test func onASandboxTheUnprivilegedStackTriesTheKernelsOverlayFirst() throws {
        let sandbox = directory.file("a.ext3").replacingOccurrences(of: "/a.ext3", with: "")
        let plan = try plan(["a.ext3:ro", "b.ext3"], mode: .fuse, container: .sandbox(sandbox))
        #expect(plan.userOverlay == .kernelElseFuseOverlayfs)
        #expect(plan.userKernelOverlayOptions == "lowerdir=\(plan.staging)/session:\(plan.staging)/image1/upper:\(plan.staging)/image0/upper:\(sandbox),userxattr")
        #expect(plan.lines.contains { $0.hasPrefix("mount -t overlay -o ro,") && $0.contains(",userxattr") && $0.contains(", else (the kernel refuses it) fuse-overlayfs -o ") })
        let forced = try self.plan(["a.ext3:ro"], mode: .fuse, container: .sandbox(sandbox), environment: ["OVERLAY_FUSE_STACK": "fuse-overlayfs"])
        #expect(forced.userOverlay == .fuseOverlayfs)
        #expect(!forced.lines.contains { $0.contains("mount -t overlay") })
        let kernel = try self.plan(["a.ext3"], mode: .fuse, container: .sandbox(sandbox), environment: ["OVERLAY_FUSE_STACK": "kernel"])
        #expect(kernel.lines.contains { $0.hasPrefix("mount -t overlay -o lowerdir=") && $0.contains(",upperdir=\(kernel.staging)/image0/upper,") && !$0.contains("fuse-overlayfs") })
        #expect(throws: RuntimeError.failed("OVERLAY_FUSE_STACK is 'fast': give auto, kernel or fuse-overlayfs")) {
            try self.plan(["a.ext3"], mode: .fuse, environment: ["OVERLAY_FUSE_STACK": "fast"])
        }
        // Root's plan ignores it.
        #expect(try self.plan(["a.ext3"], environment: ["OVERLAY_FUSE_STACK": "fuse-overlayfs"]).userOverlay == nil)
    }
}
