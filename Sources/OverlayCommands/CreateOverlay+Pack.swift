import LinuxSupport
import ArgumentParser
import Ext3
import Pack
import Overlay

#if canImport(Glibc)
import Glibc
#endif

extension CreateOverlay {
    /// `--from SRC`: read the tree, choose or check the size, build and fill the image.
    func pack(_ source: String) throws {
        let owner = CreateOverlay.owner(fakeroot: fakeroot, environment: currentEnvironment())
        // The output name is checked before the tree is read: a scan can take minutes.
        var info = stat()
        let isDirectory = stat(source, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
        try CreateOverlay.checkFree(self.target ?? Ext3.PackSource.defaultImageName(for: source, isDirectory: isDirectory))
        var tree = try withProgress("reading \(source)") { try Ext3.PackSource(path: source) }
        if let to {
            try tree.place(at: to, owner: owner.layout)
        } else if !rootTree, !tree.shadowedSystemDirectories.isEmpty {
            throw CommandFailure(CreateOverlay.shadowRefusal(source, tree.shadowedSystemDirectories))
        }
        try tree.addDirectories(createDirectories, owner: owner.layout)
        let plan = try tree.plan(sizeBytes: size?.bytes, inodes: files?.inodes)
        let formatter = try Ext3.Formatter(Ext3.Formatter.Configuration(
            sizeBytes: plan.sizeBytes, minimumInodes: plan.inodes, owner: owner.layout,
            directories: [], imageOwner: owner.image))
        let target = self.target ?? tree.defaultImageName
        if !json && (plan.sizeChosen || plan.inodesChosen) {
            print(CreateOverlay.choiceLine(tree, plan: plan, inodes: formatter.geometry.inodeCount))
        }
        let progress = isatty(2) == 1 ? ProgressLine() : nil
        let summary: Ext3.Summary
        do {
            summary = try formatter.create(at: target, packing: tree, progress: progress.map { line in { line.show($0) } })
            progress?.finish()
        } catch let error as Ext3.Error {
            progress?.finish()
            if case .invalidConfiguration = error { throw error }
            throw CommandFailure(CreateOverlay.explain(error, target: target))
        }
        if json {
            print(summary.json)
        } else {
            print("\(summary.path): packed \(CreateOverlay.grouped(UInt64(tree.fileCount))) files (\(ImageSize.human(tree.fileBytes))) from \(source)")
            print(CreateOverlay.line(for: summary))
        }
    }

    /// Why a tree with `bin/`, `lib/`... at its top is not packed at the container's `/`.
    static func shadowRefusal(_ source: String, _ names: [String]) -> String {
        let listed = names.map { $0 + "/" }.joined(separator: ", ")
        return "\(source) has \(listed) at its top: stacked at the container's / \(names.count == 1 ? "it" : "they") would hide the container's own "
            + "(commands stop working): give the path it belongs at inside the container with --to (a conda environment or venv: the path "
            + "it was created at, e.g. --to /opt/env), or --root-tree if it is a whole root tree meant to lie over /"
    }

    /// `sized from the tree: -s 1388 -n 77 (env/: 60,033 files, 981.8 MiB; with directories and
    /// links 61,203 inodes and 1.1 GiB of blocks; room ...)`: the files and bytes as the result
    /// line counts them, then what the image must hold for them.
    static func choiceLine(_ source: Ext3.PackSource, plan: Ext3.PackSource.Plan, inodes: UInt64) -> String {
        var chosen: [String] = []
        if plan.sizeChosen { chosen.append("-s \(plan.sizeBytes >> 20)") }
        if plan.inodesChosen { chosen.append("-n \(inodes / 1000)") }
        return "sized from the tree: \(chosen.joined(separator: " ")) (\(source.path): \(grouped(UInt64(source.fileCount))) files, "
            + "\(ImageSize.human(source.fileBytes)); with directories and links \(grouped(source.inodesNeeded)) inodes and "
            + "\(ImageSize.human(source.bytesNeeded)) of blocks; room is left for a quarter more, plus 1,000 files and 64 MiB)"
    }
}

/// `packing: 12,345/60,000 files, 456.7 MiB/1.0 GiB, 812.3 MiB/s` on stderr, rewritten in place.
final class ProgressLine: @unchecked Sendable {
    private var shown = false

    func show(_ progress: Ext3.PackProgress) {
        guard progress.seconds >= 0.5 else { return }  // short packs print nothing
        let rate = progress.seconds > 0 ? UInt64(Double(progress.bytes) / progress.seconds) : 0
        let text = "\rpacking: \(CreateOverlay.grouped(UInt64(progress.files)))/\(CreateOverlay.grouped(UInt64(progress.totalFiles))) files, "
            + "\(ImageSize.human(progress.bytes))/\(ImageSize.human(progress.totalBytes)), \(ImageSize.human(rate))/s\u{1B}[K"
        write(text)
        shown = true
    }

    func finish() {
        if shown { write("\r\u{1B}[K") }
        shown = false
    }

    private func write(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
