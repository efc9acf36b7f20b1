import GatewayCore
import MQTTCodec
import NIOCore
import Synchronization

/// The dashboard's live feed: one snapshot per interval, computed once and shared by every open
/// session, and nothing computed while no session is open.
///
/// Sessions join with ``join(watch:)`` (refused past ``Configuration/maxSessions``) and read server-sent
/// events from their ``Session/events`` stream; ``run()`` sleeps until the first session joins, then
/// ticks once per interval until the last one leaves: it closes the second of the topic sketch,
/// computes the snapshot, renders its event once and hands the same bytes to every session. A session
/// whose reader is slow keeps only the newest events (its stream buffers two), so a stuck browser
/// costs one buffer, not a queue. The topic sketch counts only while a session is open.
final class DashboardHub: Sendable {
    /// Limits of the feed.
    struct Configuration: Sendable {
        /// Dashboard sessions open at once; more are refused with 503. Default 10.
        var maxSessions: Int = 10
        /// Time between snapshots. Default 1 s.
        var interval: Duration = .seconds(1)
        /// Points of the rolling charts kept (at one per interval: 5 minutes). Default 300.
        var historyPoints: Int = 300
    }

    /// One open dashboard session.
    final class Session: Sendable {
        let id: Int
        /// Server-sent events to write, in order.
        let events: AsyncStream<ByteBuffer>
        fileprivate let continuation: AsyncStream<ByteBuffer>.Continuation
        /// The watch of one topic filter, if the session asked for one.
        let watcher: TopicWatch.Watcher?

        fileprivate init(id: Int, watcher: TopicWatch.Watcher?) {
            self.id = id
            self.watcher = watcher
            // Bounded: a reader that falls behind skips to the newest snapshots.
            (events, continuation) = AsyncStream.makeStream(of: ByteBuffer.self, bufferingPolicy: .bufferingNewest(2))
        }

        /// Ends ``events`` (its connection closed); the reader then leaves.
        func end() {
            continuation.finish()
        }
    }

    /// Why ``join(watch:)`` refused.
    enum JoinError: Error, Equatable {
        /// ``Configuration/maxSessions`` sessions are open.
        case full
        /// The watch filter is not a valid topic filter.
        case invalidFilter
    }

    let configuration: Configuration
    private let sources: DashboardSources
    private let state = Mutex<State>(State())
    /// Wakes ``run()`` when the first session joins.
    private let wake: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation

    private struct State: Sendable {
        var sessions: [Int: Session] = [:]
        var nextID = 0
        var history: [DashboardSnapshot.Point] = []
        var counters: DashboardSnapshot.Counters?
        /// Snapshots computed since start (for tests: nothing is computed while nobody watches).
        var computed = 0
    }

    init(configuration: Configuration, sources: DashboardSources) {
        self.configuration = configuration
        self.sources = sources
        (wake, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Opens a session, watching `watch` (a topic filter) if given. Its first event is the charts'
    /// history.
    func join(watch: String?) throws(JoinError) -> Session {
        let topicWatch = sources.broker.topicWatch
        let result: Result<Session, JoinError> = state.withLock { state in
            guard state.sessions.count < configuration.maxSessions else { return .failure(.full) }
            var watcher: TopicWatch.Watcher?
            if let watch {
                guard let started = topicWatch.start(filter: watch) else { return .failure(.invalidFilter) }
                watcher = started
            }
            let session = Session(id: state.nextID, watcher: watcher)
            state.nextID += 1
            state.sessions[session.id] = session
            session.continuation.yield(Self.event("history", .object([("points", .array(state.history.map(\.json)))])))
            // Under the lock, so that a concurrent leave cannot turn the sketch off after this.
            sources.broker.topicRates.setEnabled(true)
            return .success(session)
        }
        let session = try result.get()
        wakeContinuation.yield()
        return session
    }

    /// Closes `session`; the last one to leave stops the ticking and the topic sketch.
    func leave(_ session: Session) {
        state.withLock { state in
            state.sessions[session.id] = nil
            if state.sessions.isEmpty { sources.broker.topicRates.setEnabled(false) }
        }
        session.continuation.finish()
        if let watcher = session.watcher { sources.broker.topicWatch.stop(watcher) }
    }

    /// Open sessions.
    var sessionCount: Int { state.withLock { $0.sessions.count } }

    /// Snapshots computed since start.
    var snapshotsComputed: Int { state.withLock { $0.computed } }

    /// Ticks while sessions are open; sleeps otherwise. Returns when cancelled.
    func run() async {
        for await _ in wake {
            while !Task.isCancelled, sessionCount > 0 {
                do {
                    try await Task.sleep(for: configuration.interval)
                } catch {
                    break
                }
                tick()
            }
            if sessionCount == 0 {
                // The next session starts new rates rather than a delta over the idle time.
                state.withLock { $0.counters = nil }
            }
        }
        state.withLock { state in
            for session in state.sessions.values { session.continuation.finish() }
        }
    }

    /// Computes one snapshot and hands it to every session (with each session's watched messages).
    func tick() {
        let previous = state.withLock { $0.counters }
        let (sessions, open) = state.withLock { ($0.sessions.values.map { $0 }, $0.sessions.count) }
        guard open > 0 else { return }
        sources.broker.topicRates.tick()
        let snapshot = DashboardSnapshot.make(
            sources: sources,
            previous: previous,
            now: .now,
            wallTime: WallClock.millisecondsSinceEpoch(),
            sessions: open,
            maxSessions: configuration.maxSessions
        )
        let event = Self.event("snapshot", snapshot.json)
        state.withLock { state in
            state.counters = snapshot.counters
            state.computed += 1
            if previous != nil {
                state.history.append(snapshot.point)
                if state.history.count > configuration.historyPoints { state.history.removeFirst() }
            }
        }
        for session in sessions {
            session.continuation.yield(event)
            if let watcher = session.watcher {
                let (messages, skipped) = watcher.take()
                if !messages.isEmpty || skipped > 0 {
                    session.continuation.yield(Self.watchEvent(messages, skipped: skipped, filter: watcher.filter))
                }
            }
        }
    }

    /// A server-sent event: `event: NAME`, one `data:` line of JSON, a blank line.
    static func event(_ name: String, _ value: AdminJSON) -> ByteBuffer {
        var bytes: [UInt8] = Array("event: \(name)\ndata: ".utf8)
        value.render(into: &bytes)
        bytes.append(contentsOf: "\n\n".utf8)
        return ByteBuffer(bytes: bytes)
    }

    /// The `watch` event: the messages seen since the last one (payloads as UTF-8 text when they
    /// are, else hex) and how many were skipped by the rate bound.
    static func watchEvent(_ messages: [TopicWatch.Seen], skipped: Int, filter: String) -> ByteBuffer {
        let list: [AdminJSON] = messages.map { seen in
            var members: [(String, AdminJSON)] = [
                ("time", .int(Int(seen.receivedAt))),
                ("topic", .string(seen.topic)),
                ("qos", .int(Int(seen.qos.rawValue))),
                ("retain", .bool(seen.retain)),
                ("client_id", seen.publisherClientID.map { .string($0) } ?? .null),
                ("size", .int(seen.payloadSize)),
                ("truncated", .bool(seen.payload.count < seen.payloadSize)),
            ]
            if let text = Self.text(seen.payload, truncated: seen.payload.count < seen.payloadSize) {
                members.append(("text", .string(text)))
            } else {
                members.append(("hex", .string(Self.hex(seen.payload))))
            }
            return .object(members)
        }
        return event("watch", .object([("filter", .string(filter)), ("messages", .array(list)), ("skipped", .int(skipped))]))
    }

    /// The payload as text when it is UTF-8 without control characters other than tab and newlines (a
    /// cut payload may end inside a character: up to 3 bytes are left off).
    private static func text(_ payload: [UInt8], truncated: Bool) -> String? {
        guard payload.allSatisfy({ $0 >= 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) else { return nil }
        for cut in 0...(truncated ? min(3, payload.count) : 0) {
            if let text = String(validating: payload.dropLast(cut), as: UTF8.self) { return text }
        }
        return nil
    }

    private static func hex(_ payload: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(payload.count * 2)
        for byte in payload {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
