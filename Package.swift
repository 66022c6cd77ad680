// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "overlay-toolkit",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "create-overlay", targets: ["create-overlay"]),
        .executable(name: "mount-overlay", targets: ["mount-overlay"]),
        .executable(name: "run-overlay", targets: ["run-overlay"]),
        .executable(name: "overlay", targets: ["overlay"]),
        .library(name: "Ext3", targets: ["Ext3"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // The only place C leaks in: libext2fs + com_err, with a shim for what Swift imports badly.
        .systemLibrary(
            name: "CExt2fs",
            pkgConfig: "ext2fs",
            providers: [.apt(["libext2fs-dev"])]
        ),
        // C that must be C: the code between fork and exec, the PID-namespace init, and thin
        // wrappers for calls Swift cannot make (prctl, ioctl, GNU-only and new syscalls).
        .target(name: "CLinux"),
        // The one place for the OS: typed errno, owned descriptors, pipes, waiting with
        // deadlines, running programs, mounts/loops/namespaces, OFD locks, threads.
        .target(
            name: "LinuxSupport",
            dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // zlib, for gzip-compressed tar archives (create-overlay --from).
        .systemLibrary(
            name: "CZlib",
            providers: [.apt(["zlib1g-dev"])]
        ),
        // Swift API over libext2fs: format, populate (from a tree model), read, inspect. No CLI,
        // no mounts, no archive or directory reading.
        .target(name: "Ext3", dependencies: ["CExt2fs", "LinuxSupport"]),
        // Tar archives read in one pass: plain, gzip (zlib) or in memory; ustar, GNU and pax.
        // Knows nothing of ext3.
        .target(name: "TarArchive", dependencies: ["CZlib", "LinuxSupport"]),
        // create-overlay --from: a directory or tar archive read into Ext3's tree, sized, and
        // written into a new image.
        .target(name: "Pack", dependencies: ["Ext3", "TarArchive", "LinuxSupport"]),
        // libfuse3's low-level API (FUSE_USE_VERSION set in the shim header).
        .systemLibrary(
            name: "CFuse3",
            pkgConfig: "fuse3",
            providers: [.apt(["libfuse3-dev"])]
        ),
        // The toolkit's own FUSE driver for read-only ext3 layers (an ordinary user's `:ro`
        // images): libext2fs read once into hash maps, served by several threads.
        .target(name: "ImageDriver", dependencies: ["CFuse3", "CExt2fs"]),
        // The domain: overlay specs, stack rules, naming, locks, command files, containers.
        .target(name: "Overlay", dependencies: ["Ext3", "LinuxSupport"]),
        // Snapshots: the store, capture (directories, images, git) and their description.
        .target(name: "Snapshot", dependencies: ["Pack", "Overlay", "Ext3", "LinuxSupport"]),
        // Process checkpoints with CRIU: dump a process tree into a directory, restore it.
        .target(name: "Checkpoint", dependencies: ["LinuxSupport"]),
        // Running a stack: the Runtime protocol, Singularity and Native implementations.
        .target(name: "Runtime", dependencies: ["Overlay", "Snapshot", "Ext3", "Pack", "ImageDriver", "Checkpoint", "LinuxSupport"]),
        // ArgumentParser commands shared by the executables; testable in-process.
        .target(
            name: "OverlayCommands",
            dependencies: [
                "Ext3", "Pack", "Overlay", "Snapshot", "Runtime", "ImageDriver", "Checkpoint", "LinuxSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            plugins: ["VersionStamp"]
        ),
        // Before each build: the git commit the sources come from, for --version.
        .plugin(name: "VersionStamp", capability: .buildTool()),
        .executableTarget(name: "create-overlay", dependencies: ["OverlayCommands"]),
        .executableTarget(name: "mount-overlay", dependencies: ["OverlayCommands"]),
        .executableTarget(name: "run-overlay", dependencies: ["OverlayCommands"]),
        .executableTarget(name: "overlay", dependencies: ["OverlayCommands"]),

        // Shared test helpers: traits (.requiresRoot, .requires(executable:)), temp dirs, oracles.
        .target(name: "TestSupport", dependencies: ["LinuxSupport"], path: "Tests/TestSupport"),
        .testTarget(name: "LinuxSupportTests", dependencies: ["LinuxSupport", "TestSupport"]),
        .testTarget(name: "Ext3Tests", dependencies: ["Ext3", "LinuxSupport", "TestSupport"]),
        // The tar reader on archives made in memory: no root, no tools.
        .testTarget(name: "TarArchiveTests", dependencies: ["TarArchive", "LinuxSupport", "TestSupport"]),
        .testTarget(name: "PackTests", dependencies: ["Pack", "Ext3", "TarArchive", "TestSupport"]),
        .testTarget(name: "OverlayTests", dependencies: ["Overlay", "TestSupport"]),
        .testTarget(name: "SnapshotTests", dependencies: ["Snapshot", "Ext3", "TestSupport"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "Overlay", "Ext3", "TestSupport"]),
        // Real CRIU on real process trees (root).
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint", "LinuxSupport", "TestSupport"]),
        .testTarget(name: "OverlayCommandsTests", dependencies: ["OverlayCommands", "Ext3", "TestSupport"]),
        // Runs the built executables (create-overlay, run-overlay, ...) as a user would.
        .testTarget(name: "EndToEndTests", dependencies: ["Ext3", "Overlay", "TestSupport"]),
    ]
)
