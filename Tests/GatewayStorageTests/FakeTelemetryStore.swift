import GatewayCore
import Logging
import MQTTCodec
import NIOCore
import Synchronization
import Testing

/// An in-memory `TelemetryStore` the tests steer: it records every insert attempt and every committed
/// batch, can hold inserts until released, and can fail them. Tests wait for conditions on its state
/// (``waitUntil(_:timeout:_:)``): every state change resumes the waiters whose condition now holds, so
/// nothing sleeps to synchronize.
final class FakeTelemetryStore: TelemetryStore {
    struct Snapshot: Sendable {
        /// Batches whose insert returned successfully, in order.
        var committed: [[TelemetryRecord]] = []
        /// Every insert call (successful or not), with its records.
        var attempts: [[TelemetryRecord]] = []
        /// Insert calls that threw.
        var failures = 0
        /// Insert calls currently held by ``hold()``.
        var held = 0

        var committedRecords: [TelemetryRecord] { committed.flatMap { $0 } }
    }

    struct Failure: Error {}

    private struct State {
        var snapshot = Snapshot()
        /// Further inserts fail (after being recorded) while this is positive; `Int.max` means "until told".
        var failuresLeft = 0
        var holding = false
        var heldContinuations: [CheckedContinuation<Void, Never>] = []
        var waiters: [(id: Int, condition: @Sendable (Snapshot) -> Bool, continuation: CheckedContinuation<Bool, Never>)] = []
        var nextWaiterID = 0
    }

    private let state = Mutex(State())

    var isReachable: Bool { state.withLock { $0.failuresLeft == 0 } }

    var snapshot: Snapshot { state.withLock { $0.snapshot } }

    /// The next `count` inserts throw.
    func fail(next count: Int) { state.withLock { $0.failuresLeft = count } }

    /// Inserts throw until ``stopFailing()``.
    func failUntilTold() { state.withLock { $0.failuresLeft = .max } }

    func stopFailing() { state.withLock { $0.failuresLeft = 0 } }

    /// Holds every insert (after recording the attempt) until ``release()``.
    func hold() { state.withLock { $0.holding = true } }

    /// Lets held inserts (and later ones) go through.
    func release() {
        let held = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.holding = false
            defer { state.heldContinuations.removeAll() }
            return state.heldContinuations
        }
        for continuation in held { continuation.resume() }
    }

    func insert(_ records: [TelemetryRecord]) async throws {
        change { $0.attempts.append(records) }
        let mustHold = state.withLock { $0.holding }
        if mustHold {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let goOn = state.withLock { state -> Bool in
                    guard state.holding else { return true }
                    state.heldContinuations.append(continuation)
                    state.snapshot.held += 1
                    return false
                }
                if goOn {
                    continuation.resume()
                } else {
                    change { _ in }  // the held count changed
                }
            }
            change { $0.held = max(0, $0.held - 1) }
        }
        let fails = state.withLock { state -> Bool in
            guard state.failuresLeft > 0 else { return false }
            if state.failuresLeft != .max { state.failuresLeft -= 1 }
            return true
        }
        if fails {
            change { $0.failures += 1 }
            throw Failure()
        }
        change { $0.committed.append(records) }
    }

    /// Applies `update` and resumes the waiters whose condition now holds.
    private func change(_ update: (inout Snapshot) -> Void) {
        let ready = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            update(&state.snapshot)
            let snapshot = state.snapshot
            var ready: [CheckedContinuation<Bool, Never>] = []
            state.waiters.removeAll { waiter in
                guard waiter.condition(snapshot) else { return false }
                ready.append(waiter.continuation)
                return true
            }
            return ready
        }
        for continuation in ready { continuation.resume(returning: true) }
    }

    /// Waits until `condition` holds for the store's state (true), or `timeout` passes (false, and an
    /// issue is recorded naming `what`).
    @discardableResult
    func waitUntil(
        _ what: String,
        timeout: Duration = .seconds(10),
        sourceLocation: SourceLocation = #_sourceLocation,
        _ condition: @escaping @Sendable (Snapshot) -> Bool
    ) async -> Bool {
        let id = state.withLock { state -> Int in
            state.nextWaiterID += 1
            return state.nextWaiterID
        }
        let met = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                // Time is up: take the waiter out and resume it with false (unless it already ran).
                let continuation = self.state.withLock { state -> CheckedContinuation<Bool, Never>? in
                    guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return state.waiters.remove(at: index).continuation
                }
                continuation?.resume(returning: false)
                return false
            }
            let met = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now = state.withLock { state -> Bool in
                    if condition(state.snapshot) { return true }
                    state.waiters.append((id, condition, continuation))
                    return false
                }
                if now { continuation.resume(returning: true) }
            }
            group.cancelAll()
            return met
        }
        if !met { Issue.record("timed out after \(timeout) waiting for \(what)", sourceLocation: sourceLocation) }
        return met
    }
}

/// Polls `condition` (state the fake store does not see, such as the queue's own flags) until it holds
/// or `timeout` passes; records an issue naming `what` on timeout.
@discardableResult
func poll(
    _ what: String,
    timeout: Duration = .seconds(10),
    sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    while !condition() {
        if ContinuousClock.now >= deadline {
            Issue.record("timed out after \(timeout) waiting for \(what)", sourceLocation: sourceLocation)
            return false
        }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return true
}

/// True if `condition` stays false for all of `window` (a bounded negative check: "nothing happens").
func staysFalse(for window: Duration, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now.advanced(by: window)
    while ContinuousClock.now < deadline {
        if condition() { return false }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return !condition()
}

/// A thread-safe list tests append to from `onCommit` callbacks and publisher tasks.
final class Recorder<Element: Sendable>: Sendable {
    private let items = Mutex<[Element]>([])
    func append(_ item: Element) { items.withLock { $0.append(item) } }
    var all: [Element] { items.withLock { $0 } }
    var count: Int { items.withLock { $0.count } }
}

let silentLogger = Logger(label: "iotgw.storage-tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// A record whose payload is `"m<index>"`, on topic `t/<index % 3>`.
func record(_ index: Int, clientID: String = "c1", payloadBytes: Int? = nil) -> TelemetryRecord {
    let payload: ByteBuffer
    if let payloadBytes {
        payload = ByteBuffer(bytes: (0..<payloadBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) })
    } else {
        payload = ByteBuffer(string: "m\(index)")
    }
    return TelemetryRecord(
        receivedAt: 1_700_000_000_000 + Int64(index),
        clientID: clientID,
        topic: "t/\(index % 3)",
        qos: .atLeastOnce,
        retain: false,
        payload: payload,
        properties: nil
    )
}

func payloads(_ records: [TelemetryRecord]) -> [String] {
    records.map { String(buffer: $0.payload) }
}
