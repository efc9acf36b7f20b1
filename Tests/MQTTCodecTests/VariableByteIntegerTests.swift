import MQTTCodec
import NIOCore
import Testing

/// A value with the bytes MQTT 3.1.1 Table 2.4 / MQTT 5.0 section 1.5.5 give it.
struct VBIVector: Sendable, CustomTestStringConvertible {
    var value: UInt32
    var bytes: [UInt8]
    var testDescription: String { "\(value) = \(bytes.hex)" }
}

private let vbiVectors: [VBIVector] = [
    VBIVector(value: 0, bytes: [0x00]),
    VBIVector(value: 127, bytes: [0x7F]),
    VBIVector(value: 128, bytes: [0x80, 0x01]),
    VBIVector(value: 16_383, bytes: [0xFF, 0x7F]),
    VBIVector(value: 16_384, bytes: [0x80, 0x80, 0x01]),
    VBIVector(value: 2_097_151, bytes: [0xFF, 0xFF, 0x7F]),
    VBIVector(value: 2_097_152, bytes: [0x80, 0x80, 0x80, 0x01]),
    VBIVector(value: 268_435_455, bytes: [0xFF, 0xFF, 0xFF, 0x7F]),
]

@Suite("Variable byte integers")
struct VariableByteIntegerTests {
    @Test("encodes the spec's boundary values to the exact bytes", arguments: vbiVectors)
    func encode(_ vector: VBIVector) {
        var out = ByteBuffer()
        let written = out.writeMQTTVariableByteInteger(vector.value)
        #expect(Array(out.readableBytesView) == vector.bytes)
        #expect(written == vector.bytes.count)
        #expect(MQTTVariableByteInteger.size(Int(vector.value)) == vector.bytes.count)
    }

    @Test("decodes the spec's boundary values", arguments: vbiVectors)
    func decode(_ vector: VBIVector) throws {
        var input = buffer(vector.bytes + [0xAA])
        #expect(try input.readMQTTVariableByteInteger() == vector.value)
        // Exactly the integer's bytes are consumed.
        #expect(Array(input.readableBytesView) == [0xAA])
    }

    @Test("a truncated integer needs more data and consumes nothing", arguments: [[], [0x80], [0xFF, 0xFF], [0x80, 0x80, 0x80]] as [[UInt8]])
    func truncated(_ bytes: [UInt8]) throws {
        var input = buffer(bytes)
        #expect(try input.readMQTTVariableByteInteger() == nil)
        #expect(input.readerIndex == 0)
    }

    @Test("a fifth byte is malformed, and is rejected without waiting for it")
    func fiveBytes() {
        var five = buffer([0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
        #expect(codecError { _ = try five.readMQTTVariableByteInteger() }?.code == .malformedVariableByteInteger)
        // Four bytes all with the continuation bit: already known to be bad.
        var four = buffer([0x80, 0x80, 0x80, 0x80])
        let error = codecError { _ = try four.readMQTTVariableByteInteger() }
        #expect(error?.code == .malformedVariableByteInteger)
        #expect(error?.reasonCode == .malformedPacket)
    }

    @Test("a fixed header with a five-byte remaining length is malformed")
    func fiveByteRemainingLength() {
        var parser = clientParser(.v3_1_1)
        var input = buffer([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
        #expect(codecError { _ = try parser.next(&input) }?.code == .malformedVariableByteInteger)

        var server = MQTTPacketParser(isServer: true)
        var connect = buffer([0x10, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(codecError { _ = try server.next(&connect) }?.code == .malformedVariableByteInteger)
    }

    @Test("every value round-trips around the boundaries")
    func roundTrip() throws {
        let values: [UInt32] = [1, 126, 127, 128, 129, 255, 256, 16_382, 16_383, 16_384, 16_385, 2_097_150, 2_097_151, 2_097_152,
            2_097_153, 268_435_454, 268_435_455]
        var out = ByteBuffer()
        for value in values { out.writeMQTTVariableByteInteger(value) }
        for value in values { #expect(try out.readMQTTVariableByteInteger() == value) }
        #expect(out.readableBytes == 0)
    }
}
