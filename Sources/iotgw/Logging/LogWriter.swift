import Dispatch
import Foundation
import Metrics
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Standard error behind a bounded buffer, written by one dedicated thread.
///
/// Callers (any thread, event loops included) only append a line under a short lock; they never wait
/// for the terminal, the pipe or journald. When the buffer is full (``maxLines`` or ``maxBytes``), the
/// line is dropped and counted in `iotgw_log_lines_dropped_total`, and the writer reports the number
/// in the stream once it catches up. The writer thread blocks in `write(2)` when stderr is slow, which
/// is the point: nothing else does.
final class LogWriter: Sendable {
    /// Lines the buffer holds at most.
    let maxLines: Int
    /// Bytes the buffer holds at most.
    let maxBytes: Int

    private struct State {
        var lines: [[UInt8]] = []
        var bytes = 0
        /// Lines dropped since the writer last reported drops.
        var droppedSinceReport = 0
        /// True while the writer thread sleeps on the semaphore and must be woken.
        var writerWaiting = false
        /// True while the writer holds a batch it has not finished writing.
        var writing = false
        /// Callers of ``flush(timeout:)`` waiting for the buffer to empty.
        var flushWaiters = 0
    }

    private let state = Mutex(State())
    private let wakeUp = DispatchSemaphore(value: 0)
    /// Signalled once per flush waiter when the writer finds the buffer empty.
    private let drained = DispatchSemaphore(value: 0)
    private let droppedTotal = Atomic<Int>(0)
    private let droppedCounter: Counter
    private let fileDescriptor: Int32

    /// - Parameters:
    ///   - fileDescriptor: where lines go; default standard error.
    ///   - maxLines: buffer bound in lines. Default 10,000.
    ///   - maxBytes: buffer bound in bytes. Default 4 MiB.
    init(fileDescriptor: Int32 = 2, maxLines: Int = 10_000, maxBytes: Int = 4 << 20) {
        self.fileDescriptor = fileDescriptor
        self.maxLines = maxLines
        self.maxBytes = maxBytes
        self.droppedCounter = Counter(label: "iotgw_log_lines_dropped_total")
    }

    /// Starts the writer thread. Call once.
    func start() {
        let thread = Thread { [self] in self.writeLoop() }
        thread.name = "iotgw-log-writer"
        thread.start()
    }

    /// Lines dropped since start because the buffer was full.
    var droppedLines: Int { droppedTotal.load(ordering: .relaxed) }

    /// Queues one line (which ends with a newline). Never blocks beyond a short lock.
    func enqueue(_ line: [UInt8]) {
        let (accepted, wake) = state.withLock { state -> (Bool, Bool) in
            guard state.lines.count < maxLines, state.bytes + line.count <= maxBytes else {
                state.droppedSinceReport += 1
                return (false, false)
            }
            state.lines.append(line)
            state.bytes += line.count
            let wake = state.writerWaiting
            state.writerWaiting = false
            return (true, wake)
        }
        if wake { wakeUp.signal() }
        if !accepted {
            droppedTotal.add(1, ordering: .relaxed)
            droppedCounter.increment()
        }
    }

    /// Waits (up to `timeout`) until everything queued so far is written: before the process exits.
    /// The writer thread wakes the caller when it finds the buffer empty. Returns whether it emptied in time.
    @discardableResult
    func flush(timeout: Duration) -> Bool {
        let (empty, wake) = state.withLock { state -> (Bool, Bool) in
            if state.lines.isEmpty && !state.writing && state.droppedSinceReport == 0 { return (true, false) }
            state.flushWaiters += 1
            // A sleeping writer with only a drop report to write is woken for it.
            let wake = state.writerWaiting
            state.writerWaiting = false
            return (false, wake)
        }
        if empty { return true }
        if wake { wakeUp.signal() }
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = Int(clamping: seconds) &* 1_000_000_000 &+ Int(attoseconds / 1_000_000_000)
        if drained.wait(timeout: .now() + .nanoseconds(nanoseconds)) == .success { return true }
        // Timed out; the writer may have signalled in between, which the next flush then takes.
        state.withLock { $0.flushWaiters = max(0, $0.flushWaiters - 1) }
        return false
    }

    private func writeLoop() {
        while true {
            var flushed = 0
            let batch = state.withLock { state -> ([[UInt8]], Int)? in
                guard !state.lines.isEmpty || state.droppedSinceReport > 0 else {
                    state.writerWaiting = true
                    flushed = state.flushWaiters
                    state.flushWaiters = 0
                    return nil
                }
                let batch = state.lines
                let dropped = state.droppedSinceReport
                state.lines.removeAll(keepingCapacity: true)
                state.bytes = 0
                state.droppedSinceReport = 0
                state.writing = true
                return (batch, dropped)
            }
            guard let (lines, dropped) = batch else {
                for _ in 0..<flushed { drained.signal() }
                wakeUp.wait()
                continue
            }
            var output: [UInt8] = []
            output.reserveCapacity(lines.reduce(0) { $0 + $1.count } + 64)
            for line in lines { output.append(contentsOf: line) }
            if dropped > 0 {
                output.append(contentsOf: "iotgw: \(dropped) log lines dropped (log buffer full)\n".utf8)
            }
            writeAll(output)
            state.withLock { $0.writing = false }
        }
    }

    private func writeAll(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(fileDescriptor, raw.baseAddress! + offset, raw.count - offset)
                if written > 0 {
                    offset += written
                } else if written < 0 && errno == EINTR {
                    continue
                } else {
                    return  // stderr is gone: nothing sensible is left to do with the line.
                }
            }
        }
    }
}
