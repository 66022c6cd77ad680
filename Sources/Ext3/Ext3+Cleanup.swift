#if canImport(Glibc)
import Glibc
#endif

extension Ext3 {
    /// Files being built that must not outlive the process: while at least one is registered,
    /// SIGINT, SIGTERM and SIGHUP unlink them all and then take their previous course (by
    /// default, ending the process). Dispositions set to "ignore" are left alone.
    ///
    /// The signal handler only reads fixed buffers and calls unlink, sigaction and raise, which
    /// are async-signal-safe.
    enum Cleanup {
        static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
        static let slotCount = 32
        static let slotBytes = Int(PATH_MAX) + 1

        /// Path buffers; a slot is in use while its first byte is not NUL.
        nonisolated(unsafe) static let slots: UnsafeMutablePointer<CChar> = {
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: slotCount * slotBytes)
            buffer.initialize(repeating: 0, count: slotCount * slotBytes)
            return buffer
        }()
        /// The dispositions we replaced, by signal number.
        nonisolated(unsafe) static let previous: UnsafeMutablePointer<sigaction> = {
            let table = UnsafeMutablePointer<sigaction>.allocate(capacity: 65)
            table.initialize(repeating: sigaction(), count: 65)
            return table
        }()
        nonisolated(unsafe) static var installed: [Int32] = []
        nonisolated(unsafe) static var active = 0
        nonisolated(unsafe) static let lock: UnsafeMutablePointer<pthread_mutex_t> = {
            let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
            pthread_mutex_init(mutex, nil)
            return mutex
        }()

        /// Registers `path` for removal on a fatal signal. Returns the slot to pass to
        /// ``unregister(_:)``, or nil when all slots are taken (the file is then only removed on
        /// the error paths).
        static func register(_ path: String) -> Int? {
            let bytes = Array(path.utf8)
            guard bytes.count < slotBytes else { return nil }
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            for index in 0..<slotCount where slots[index * slotBytes] == 0 {
                let base = slots + index * slotBytes
                for (offset, byte) in bytes.enumerated().dropFirst() { base[offset] = CChar(bitPattern: byte) }
                base[bytes.count] = 0
                base[0] = CChar(bitPattern: bytes[0])  // last: the slot is live from here
                if active == 0 { install() }
                active += 1
                return index
            }
            return nil
        }

        static func unregister(_ slot: Int?) {
            guard let slot else { return }
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            slots[slot * slotBytes] = 0
            active -= 1
            if active == 0 { restore() }
        }

        private static func install() {
            installed = []
            for signal in signals {
                var current = sigaction()
                guard sigaction(signal, nil, &current) == 0 else { continue }
                if unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) {
                    continue
                }
                previous[Int(signal)] = current
                var action = sigaction()
                action.__sigaction_handler.sa_handler = cleanupOnSignal
                sigemptyset(&action.sa_mask)
                action.sa_flags = 0
                if sigaction(signal, &action, nil) == 0 { installed.append(signal) }
            }
        }

        private static func restore() {
            for signal in installed { sigaction(signal, previous + Int(signal), nil) }
            installed = []
        }
    }
}

/// Unlinks every registered file, puts the previous disposition back and raises the signal
/// again (it is delivered once this handler returns).
private func cleanupOnSignal(_ signal: Int32) {
    let slots = Ext3.Cleanup.slots
    for index in 0..<Ext3.Cleanup.slotCount {
        let base = slots + index * Ext3.Cleanup.slotBytes
        if base[0] != 0 { unlink(base) }
    }
    sigaction(signal, Ext3.Cleanup.previous + Int(signal), nil)
    raise(signal)
}
