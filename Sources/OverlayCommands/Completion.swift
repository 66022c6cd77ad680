import ArgumentParser

/// What shell completion offers for the values users type most (the generated bash, zsh and
/// fish scripts take these from the commands themselves).
extension CompletionKind {
    /// An overlay image: files ending in .ext3 or .img (and directories, to get there).
    static var overlayImage: CompletionKind { .file(extensions: ["ext3", "img"]) }
    /// A container: a SIF, squashfs or image file, or a directory (a sandbox).
    static var container: CompletionKind { .file(extensions: ["sif", "sqsh", "squashfs", "img"]) }
}
