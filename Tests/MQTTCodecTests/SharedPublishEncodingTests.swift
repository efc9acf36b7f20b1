import MQTTCodec
import NIOCore
import Testing

@Suite("Encode once: shared PUBLISH bytes")
struct SharedPublishEncodingTests {
    private let allocator = ByteBufferAllocator()

    @Test("a QoS 1 PUBLISH from the cache is byte for byte the spec encoding, with each receiver's packet id")
    func qos1PatchesPacketIdentifier() {
        let shared = SharedPublishEncoding()
        for id: UInt16 in [7, 0x1234, 1] {
            let packet = MQTTPublishPacket(
                topic: "a/b", payload: ByteBuffer(bytes: [0xAA, 0xBB]), qos: .atLeastOnce, packetIdentifier: id, sharedEncoding: shared)
            let bytes = Array(MQTTPacket.publish(packet).encode(version: .v3_1_1, allocator: allocator).readableBytesView)
            // 3.1.1 section 3.3: 0x32, remaining length 9, topic "a/b", packet id, payload.
            #expect(bytes == [0x32, 0x09, 0x00, 0x03, 0x61, 0x2F, 0x62, UInt8(id >> 8), UInt8(id & 0xFF), 0xAA, 0xBB])
        }
    }

    @Test("forms differ by version, QoS and RETAIN; each matches an unshared encoding")
    func formsMatchUnsharedEncoding() {
        let shared = SharedPublishEncoding()
        var properties = MQTTProperties()
        properties.contentType = "text/plain"
        for version in [MQTTProtocolVersion.v3_1_1, .v5] {
            for qos in [MQTTQoS.atMostOnce, .atLeastOnce, .exactlyOnce] {
                for retain in [false, true] {
                    for id: UInt16 in [3, 9] {
                        var packet = MQTTPublishPacket(
                            topic: "sensors/température", payload: ByteBuffer(string: "21.5"), qos: qos, retain: retain,
                            packetIdentifier: qos == .atMostOnce ? nil : id,
                            properties: version == .v5 ? properties : MQTTProperties())
                        let plain = MQTTPacket.publish(packet).encode(version: version, allocator: allocator)
                        packet.sharedEncoding = shared
                        let cached = MQTTPacket.publish(packet).encode(version: version, allocator: allocator)
                        #expect(Array(cached.readableBytesView) == Array(plain.readableBytesView), "\(version) QoS \(qos) retain \(retain) id \(id)")
                    }
                }
            }
        }
    }

    @Test("a large payload (two-byte remaining length) keeps the packet id at the right offset")
    func largePayload() {
        let shared = SharedPublishEncoding()
        let payload = ByteBuffer(repeating: 0x5A, count: 300)
        for id: UInt16 in [1, 2] {
            let packet = MQTTPublishPacket(topic: "t", payload: payload, qos: .exactlyOnce, packetIdentifier: id, sharedEncoding: shared)
            var unshared = packet
            unshared.sharedEncoding = nil
            #expect(
                Array(MQTTPacket.publish(packet).encode(version: .v5, allocator: allocator).readableBytesView)
                    == Array(MQTTPacket.publish(unshared).encode(version: .v5, allocator: allocator).readableBytesView))
        }
    }

    @Test("appended to a buffer (write(version:to:)), each receiver's copy carries its own packet id")
    func appendedWithOwnPacketIdentifier() {
        let shared = SharedPublishEncoding()
        var out = ByteBuffer(bytes: [0xEE])
        var expected: [UInt8] = [0xEE]
        for (id, qos) in [(UInt16(5), MQTTQoS.atLeastOnce), (0x0102, .atLeastOnce), (9, .exactlyOnce)] {
            let packet = MQTTPublishPacket(topic: "a/b", payload: ByteBuffer(string: "v"), qos: qos, packetIdentifier: id, sharedEncoding: shared)
            MQTTPacket.publish(packet).write(version: .v5, to: &out)
            var unshared = packet
            unshared.sharedEncoding = nil
            expected += Array(MQTTPacket.publish(unshared).encode(version: .v5, allocator: allocator).readableBytesView)
        }
        #expect(Array(out.readableBytesView) == expected)
    }

    @Test("the cache is not part of the packet's value")
    func notPartOfValue() {
        let packet = MQTTPublishPacket(topic: "t", payload: ByteBuffer(string: "x"))
        var withCache = packet
        withCache.sharedEncoding = SharedPublishEncoding()
        #expect(packet == withCache)
    }
}
