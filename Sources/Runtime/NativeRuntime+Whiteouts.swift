import Ext3
import LinuxSupport

/// After a run with a writable image: its deletions and replaced directories in the form every
/// overlay reader agrees on (see ``Ext3/Whiteouts``), so that a run in the other mode, or
/// Apptainer either way it runs, sees what this one left.
extension NativeRuntime {
    /// Normalizes the whiteouts of the plan's writable images, once they are unmounted; the
    /// caller still holds their write locks. Read-only images are never opened for writing.
    /// A failure is a warning: the job's own status stands, and the next writable run tries again.
    static func normalizeWhiteouts(after plan: NativePlan) {
        for image in plan.images where !image.readOnly {
            // Kernel mode: the loop device goes after the last unmount; one still there means
            // the image may still be mounted, and is left alone.
            if plan.mode == .kernel, !loopDevices(backing: [image.path]).isEmpty {
                IO.writeLine("warning: \(image.path) is still attached to a loop device; its deletions were not rewritten for other readers (the next run does it)")
                continue
            }
            do {
                try Ext3.Whiteouts.normalize(imagePath: image.path, under: "upper")
            } catch {
                IO.writeLine("warning: \(image.path): its deletions were not rewritten for other readers (the next run tries again): \(error)")
            }
        }
    }
}
