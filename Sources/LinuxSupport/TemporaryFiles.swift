import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Files being built that must not outlive the process: while at least one is registered,
/// SIGINT, SIGTERM and SIGHUP unlink them all and then take their previous course (by
/// default, ending the process). Dispositions set to "ignore" are left alone. (SIGKILL cannot
/// be caught: a file that must not survive it is made unnamed, see ``UnnamedFile``.)
///
/// The signal handler only reads fixed buffers and atomics and calls unlink, sigaction and
/// raise, which are async-signal-safe.
public enum TemporaryFiles {
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    static let slotCount = 32
    static let slotBytes = Int(PATH_MAX) + 1

    /// Path buffers, read by the handler; a slot is live while its flag is set.
    nonisolated(unsafe) static let slots: UnsafeMutablePointer<CChar> = {
        let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: slotCount * slotBytes)
        buffer.initialize(repeating: 0, count: slotCount * slotBytes)
        return buffer
    }()
    static let live = Atomic<UInt32>(0)  // bit N: slot N holds a path
    /// The dispositions replaced, by signal number (written before the handler is installed).
    nonisolated(unsafe) static let previous: UnsafeMutablePointer<sigaction> = {
        let table = UnsafeMutablePointer<sigaction>.allocate(capacity: 65)
        table.initialize(repeating: sigaction(), count: 65)
        return table
    }()
    /// Registration bookkeeping: which signals are installed and how many slots are in use.
    static let registry = Mutex<(installed: [Int32], active: Int)>(([], 0))

    /// Registers `path` for removal on a fatal signal. Returns the slot to pass to
    /// ``unregister(_:)``, or nil when all slots are taken (the file is then only removed on
    /// the error paths).
    public static func register(_ path: String) -> Int? {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < slotBytes else { return nil }
        return registry.withLock { registry -> Int? in
            for index in 0..<slotCount where live.load(ordering: .acquiring) & (1 << index) == 0 {
                let base = slots + index * slotBytes
                for (offset, byte) in bytes.enumerated() { base[offset] = CChar(bitPattern: byte) }
                base[bytes.count] = 0
                live.bitwiseOr(1 << UInt32(index), ordering: .releasing)
                if registry.active == 0 { registry.installed = install() }
                registry.active += 1
                return index
            }
            return nil
        }
    }

    public static func unregister(_ slot: Int?) {
        guard let slot else { return }
        registry.withLock { registry in
            live.bitwiseAnd(~(1 << UInt32(slot)), ordering: .releasing)
            registry.active -= 1
            if registry.active == 0 {
                for signal in registry.installed { sigaction(signal, previous + Int(signal), nil) }
                registry.installed = []
            }
        }
    }

    private static func install() -> [Int32] {
        var installed: [Int32] = []
        for signal in signals {
            var current = sigaction()
            guard sigaction(signal, nil, &current) == 0 else { continue }
            if unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) {
                continue
            }
            previous[Int(signal)] = current
            var action = sigaction()
            action.__sigaction_handler.sa_handler = removeOnSignal
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            if sigaction(signal, &action, nil) == 0 { installed.append(signal) }
        }
        return installed
    }
}

/// Unlinks every registered file, puts the previous disposition back and raises the signal
/// again (it is delivered once this handler returns).
private func removeOnSignal(_ signal: Int32) {
    let live = TemporaryFiles.live.load(ordering: .acquiring)
    for index in 0..<TemporaryFiles.slotCount where live & (1 << UInt32(index)) != 0 {
        unlink(TemporaryFiles.slots + index * TemporaryFiles.slotBytes)
    }
    sigaction(signal, TemporaryFiles.previous + Int(signal), nil)
    raise(signal)
}
