import MQTTCodec
import NIOCore
import Testing

/// Inputs the fuzz targets (Fuzz/FuzzMQTT) found to break a property, reduced to what matters. Each
/// stays here so the bug cannot come back unnoticed.
@Suite("Fuzz regressions")
struct FuzzRegressionTests {
    @Test("a 3.1.1 UNSUBACK with bytes after the packet identifier is malformed (3.1.1 section 3.11)")
    func unsubAckWithPayloadInV311() {
        // Found by FuzzMQTT: the bytes were read as reason codes that 3.1.1 does not have, so the packet
        // did not survive re-encoding.
        var parser = MQTTPacketParser(isServer: false, version: .v3_1_1)
        var input = ByteBuffer(bytes: [0xB0, 0x04, 0x00, 0x04, 0x00, 0x11])
        let error = codecError { _ = try parser.next(&input) }
        #expect(error?.code == .malformedPacket)

        var v5 = MQTTPacketParser(isServer: false, version: .v5)
        var valid = ByteBuffer(bytes: [0xB0, 0x04, 0x00, 0x04, 0x00, 0x11])
        #expect(throws: Never.self) {
            let packet = try v5.next(&valid)
            #expect(packet == .unsuback(MQTTSubAckPacket(packetIdentifier: 4, reasonCodes: [.noSubscriptionExisted])))
        }
    }
}
