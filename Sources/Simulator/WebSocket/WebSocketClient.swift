import CWebSockets

#if canImport(Glibc)
import Glibc
#endif

/// One simulated WebSocket device (or consumer): its libwebsockets connection and its protocol state, for either the
/// MQTT subprotocol or iotgw's JSON API. Owned by the ``WebSocketEngine``; only its service thread touches it.
final class WebSocketClient {
    enum State: Equatable { case idle, connecting, handshaking, subscribing, ready, closing, closed, failed }

    let plan: ClientPlan
    let slot: Int
    /// The connection, while libwebsockets has one.
    var wsi: OpaquePointer?
    var state = State.idle
    /// Whether a close was requested: the next writeable callback closes after flushing.
    var closeRequested = false

    /// MQTT bytes waiting for the next writeable callback, behind `LWS_PRE` bytes of header room. Several packets
    /// go out in one binary frame; MQTT over WebSocket allows packets to span or share frames.
    var mqttOutbound: [UInt8]
    /// JSON API messages waiting to be sent, one text frame each, each behind `LWS_PRE` bytes of header room.
    var jsonOutbound: [[UInt8]] = []
    var decoder: MiniMQTT.Decoder
    /// The JSON message being reassembled from fragments.
    var jsonInbound: [UInt8] = []
    private var nextPacketID: UInt16 = 0
    var pendingSubscriptions: Set<Int> = []
    /// Packet ids (MQTT) or request ids (JSON) of telemetry awaiting acknowledgement.
    var awaitingAcknowledgement: Set<Int> = []
    /// QoS 2 packet ids received and not yet released.
    var awaitingRelease: Set<UInt16> = []
    var lastSent: UInt64 = 0
    /// The JSON API path with this client's id as the `client_id` query parameter, kept alive (C string) for
    /// as long as the client: libwebsockets may read it again when it follows a redirect or retries.
    private var jsonPathCString: UnsafeMutablePointer<CChar>?

    init(plan: ClientPlan, slot: Int, version: Scenario.ProtocolVersion) {
        self.plan = plan
        self.slot = slot
        decoder = MiniMQTT.Decoder(version: version)
        mqttOutbound = Array(repeating: 0, count: WebSocketClient.headroom)
    }

    /// `LWS_PRE`: room libwebsockets needs before the payload to write the frame header in place.
    static let headroom = Int(iotgw_lws_pre())

    var isMQTT: Bool { plan.transport == .wsMQTT }

    var hasOutbound: Bool { mqttOutbound.count > Self.headroom || !jsonOutbound.isEmpty }

    /// The next MQTT packet id, skipping 0 (not allowed) and ids still in use.
    func allocatePacketID() -> UInt16 {
        repeat {
            nextPacketID = nextPacketID &+ 1
        } while nextPacketID == 0 || awaitingAcknowledgement.contains(Int(nextPacketID)) || pendingSubscriptions.contains(Int(nextPacketID))
        return nextPacketID
    }

    /// The next JSON API request id.
    func allocateRequestID() -> Int {
        nextPacketID = nextPacketID &+ 1
        return Int(nextPacketID) | (Int(slot) << 16)
    }

    /// `base?client_id=ID` (or `&client_id=` when `base` has a query already), as a C string owned by the client.
    func jsonPath(base: String) -> UnsafeMutablePointer<CChar> {
        if let jsonPathCString { return jsonPathCString }
        // Client ids are `sim-TAG-N`: letters, digits and dashes, nothing to percent-encode.
        let path = base + (base.contains("?") ? "&" : "?") + "client_id=" + plan.clientID
        let pointer = strdup(path)!
        jsonPathCString = pointer
        return pointer
    }

    deinit {
        free(jsonPathCString)
    }

    func queueMQTT(_ bytes: [UInt8]) {
        mqttOutbound.append(contentsOf: bytes)
    }

    func queueJSON(_ text: String) {
        var frame = [UInt8](repeating: 0, count: Self.headroom)
        frame.append(contentsOf: text.utf8)
        jsonOutbound.append(frame)
    }
}

/// A client belongs to the WebSocket engine's service thread.
@available(*, unavailable)
extension WebSocketClient: Sendable {}
