import DequeModule
import MQTTCodec
import Synchronization

/// A connection's outgoing PUBACK/PUBREC packets, in the order their PUBLISHes arrived.
///
/// MQTT requires acknowledgements in receive order (MQTT 3.1.1 section 4.6). With `ack: persisted` an
/// acknowledgement waits for its batch to commit, while the next one may be ready at once; it then
/// waits behind the first. The batch writer marks slots ready from its own task, so the queue is
/// behind a lock; the connection task pops the ready prefix.
final class AckQueue: Sendable {
    private struct Slot: Sendable {
        var id: UInt64
        /// Filled in by the connection once it knows the reason code.
        var packet: MQTTPacket?
        /// Whatever the acknowledgement waits for (a storage commit) has happened.
        var committed: Bool
        var isReady: Bool { committed && packet != nil }
    }

    private struct State: Sendable {
        var slots: Deque<Slot> = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    /// Reserves the next place in line. The slot is written once it has a packet (``setPacket(_:_:)``
    /// or ``complete(_:with:)``) and is committed (``complete(_:with:)``), in either order.
    func reserve() -> UInt64 {
        state.withLock { state in
            state.nextID += 1
            state.slots.append(Slot(id: state.nextID, packet: nil, committed: false))
            return state.nextID
        }
    }

    /// Sets the packet of slot `id` without marking it committed.
    func setPacket(_ id: UInt64, _ packet: MQTTPacket) {
        state.withLock { state in
            if let index = state.slots.firstIndex(where: { $0.id == id }) { state.slots[index].packet = packet }
        }
    }

    /// Marks slot `id` committed (and sets its packet when given). Returns true when the head of the
    /// queue is ready, i.e. the connection has something to write.
    func complete(_ id: UInt64, with packet: MQTTPacket? = nil) -> Bool {
        state.withLock { state in
            if let index = state.slots.firstIndex(where: { $0.id == id }) {
                state.slots[index].committed = true
                if let packet { state.slots[index].packet = packet }
            }
            return state.slots.first?.isReady ?? false
        }
    }

    /// Removes and returns the first acknowledgement if it is ready.
    func popReady() -> MQTTPacket? {
        state.withLock { state in
            guard let first = state.slots.first, first.isReady else { return nil }
            return state.slots.removeFirst().packet
        }
    }

    /// Acknowledgements not yet written.
    var count: Int { state.withLock { $0.slots.count } }
}
