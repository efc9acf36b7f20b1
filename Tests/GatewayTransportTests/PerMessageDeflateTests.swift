import NIOCore
import NIOWebSocket
import Testing

@testable import GatewayTransport

/// permessage-deflate (RFC 7692): the negotiation of section 7 and its examples, the compressed frames
/// of section 7.2.3 byte for byte, round trips with and without context takeover, and the bound on
/// inflating (a decompression bomb stops at the limit with 1009).
@Suite("permessage-deflate")
struct PerMessageDeflateTests {
    // MARK: Negotiation

    /// The response to these header values with the server's default settings (nil: no extension).
    private func answer(_ values: String..., settings: PerMessageDeflate.Settings = .init()) -> String? {
        PerMessageDeflate.negotiate(offers: values, settings: settings)?.responseHeaderValue
    }

    @Test func simplestOfferIsAcceptedAsIs() {
        // RFC 7692 7.1.3 (first example): no client_max_window_bits in the offer, none in the answer.
        #expect(answer("permessage-deflate") == "permessage-deflate")
        let agreed = PerMessageDeflate.negotiate(offers: ["permessage-deflate"])
        #expect(agreed?.clientWindowBits == 15)  // the client may use the full window
        #expect(agreed?.serverWindowBits == 13)  // ours, smaller, need not be announced
    }

    @Test func bareClientMaxWindowBitsIsNarrowed() {
        // The offer browsers send: the client allows the server to limit its window.
        #expect(answer("permessage-deflate; client_max_window_bits") == "permessage-deflate; client_max_window_bits=13")
        var wide = PerMessageDeflate.Settings()
        wide.clientWindowBits = 15
        #expect(answer("permessage-deflate; client_max_window_bits", settings: wide) == "permessage-deflate; client_max_window_bits=15")
        // With a value the answer is never larger than it.
        #expect(answer("permessage-deflate; client_max_window_bits=10") == "permessage-deflate; client_max_window_bits=10")
        #expect(answer("permessage-deflate; client_max_window_bits=15") == "permessage-deflate; client_max_window_bits=13")
        #expect(PerMessageDeflate.negotiate(offers: ["permessage-deflate; client_max_window_bits=10"])?.clientWindowBits == 10)
    }

    @Test func rfcExampleOfTwoOffersTakesTheFirst() {
        // RFC 7692 7.1.3: "permessage-deflate; client_max_window_bits; server_max_window_bits=10,
        // permessage-deflate; client_max_window_bits" — the first is acceptable.
        #expect(
            answer("permessage-deflate; client_max_window_bits; server_max_window_bits=10, permessage-deflate; client_max_window_bits")
                == "permessage-deflate; server_max_window_bits=10; client_max_window_bits=13"
        )
        let agreed = PerMessageDeflate.negotiate(offers: ["permessage-deflate; server_max_window_bits=10"])
        #expect(agreed?.serverWindowBits == 10)
        // Asked for more than our window: answered with ours (same or smaller, 7.1.2.1).
        #expect(answer("permessage-deflate; server_max_window_bits=15") == "permessage-deflate; server_max_window_bits=13")
    }

    @Test func serverWindowOfEightIsDeclinedForTheNextOffer() {
        // zlib makes no raw DEFLATE with a 256-byte window: that offer cannot be honoured.
        #expect(answer("permessage-deflate; server_max_window_bits=8, permessage-deflate") == "permessage-deflate")
        #expect(answer("permessage-deflate; server_max_window_bits=8") == nil)
    }

    @Test func noContextTakeoverIsAnswered() {
        #expect(answer("permessage-deflate; server_no_context_takeover") == "permessage-deflate; server_no_context_takeover")
        #expect(answer("permessage-deflate; client_no_context_takeover") == "permessage-deflate; client_no_context_takeover")
        let both = PerMessageDeflate.negotiate(offers: ["permessage-deflate; server_no_context_takeover; client_no_context_takeover"])
        #expect(both?.usesContextTakeover == false)
        var agreed = PerMessageDeflate.negotiate(offers: ["permessage-deflate; client_max_window_bits"])!
        #expect(agreed.usesContextTakeover)
        agreed.dropContextTakeover()
        #expect(
            agreed.responseHeaderValue
                == "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=13"
        )
    }

    @Test func quotedValuesWhitespaceAndSeveralLines() {
        #expect(answer("permessage-deflate; client_max_window_bits=\"10\"") == "permessage-deflate; client_max_window_bits=10")
        #expect(answer("permessage-deflate ;server_max_window_bits = \"12\" ") == "permessage-deflate; server_max_window_bits=12")
        // Other extensions before it are skipped; several header lines are one list.
        #expect(answer("x-webkit-deflate-frame", "permessage-deflate; client_no_context_takeover") == "permessage-deflate; client_no_context_takeover")
        #expect(answer("foo; bar=\"a b\"") == nil)  // a quoted value must be a token once unescaped
        #expect(answer("x-other, , permessage-deflate") == "permessage-deflate")
    }

    @Test(arguments: [
        "permessage-deflate; unknown_parameter",  // not defined for offers
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",  // twice
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",  // twice
        "permessage-deflate; server_no_context_takeover=1",  // value where none belongs
        "permessage-deflate; client_no_context_takeover=\"x\"",
        "permessage-deflate; server_max_window_bits",  // needs a value
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=08",  // no leading zero
        "permessage-deflate; client_max_window_bits=+9",
        "permessage-deflate; client_max_window_bits=\"1 0\"",
        "permessage-deflate; client_max_window_bits=",  // broken syntax
        "permessage-deflate; ; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=\"10",  // unterminated quote
        "permessage-deflate;; server_no_context_takeover",
        "x-other",
    ])
    func declinesWhatItCannotHonour(offer: String) {
        #expect(answer(offer) == nil)
    }

    @Test func declinedOfferFallsBackToTheNext() {
        #expect(answer("permessage-deflate; foo=1, permessage-deflate; client_max_window_bits=9") == "permessage-deflate; client_max_window_bits=9")
    }

    @Test func budgetHandsOutTakeoverSlots() {
        let budget = DeflateContextBudget(limit: 2)
        #expect(budget.reserveTakeover())
        #expect(budget.reserveTakeover())
        #expect(!budget.reserveTakeover())
        budget.releaseTakeover()
        #expect(budget.reserveTakeover())
        #expect(budget.currentTakeoverConnections == 2)
        #expect(!DeflateContextBudget(limit: 0).reserveTakeover())
    }

    // MARK: Compressing and inflating

    private let hello: [UInt8] = [0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00]  // RFC 7692 7.2.3.1

    private func compressor(takeover: Bool, threshold: Int = 0, budget: DeflateContextBudget? = nil) -> PerMessageDeflate.Compressor {
        var parameters = PerMessageDeflate.negotiate(offers: ["permessage-deflate"])!
        if !takeover { parameters.dropContextTakeover() }
        return PerMessageDeflate.Compressor(parameters: parameters, threshold: threshold, budget: budget)
    }

    @Test func compressesHelloAsTheRFCDoes() {
        let withTakeover = compressor(takeover: true)
        let allocator = ByteBufferAllocator()
        #expect(withTakeover.compress(ByteBuffer(string: "Hello"), allocator: allocator) == ByteBuffer(bytes: hello))
        // RFC 7692 7.2.3.2: the second "Hello" refers back to the first.
        #expect(withTakeover.compress(ByteBuffer(string: "Hello"), allocator: allocator) == ByteBuffer(bytes: [0xF2, 0x00, 0x11, 0x00, 0x00]))
        // Without context takeover every message starts afresh; one that does not shrink ("Hello" takes 7
        // bytes compressed) goes out as it is.
        let withoutTakeover = compressor(takeover: false)
        #expect(withoutTakeover.compress(ByteBuffer(string: "Hello"), allocator: allocator) == nil)
        let twice = withoutTakeover.compress(ByteBuffer(string: "Hello Hello Hello"), allocator: allocator)
        #expect(twice != nil)
        #expect(withoutTakeover.compress(ByteBuffer(string: "Hello Hello Hello"), allocator: allocator) == twice)
    }

    @Test func smallMessagesStayUncompressed() {
        let c = compressor(takeover: true, threshold: 256)
        #expect(c.compress(ByteBuffer(repeating: 0x41, count: 255), allocator: ByteBufferAllocator()) == nil)
        #expect(c.compress(ByteBuffer(repeating: 0x41, count: 256), allocator: ByteBufferAllocator()) != nil)
    }

    private let mask: WebSocketMaskingKey = [7, 1, 9, 3]

    private func frame(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true, rsv1: Bool = false) -> WebSocketFrame {
        var data = ByteBuffer(bytes: bytes)
        data.webSocketUnmask(mask)
        return WebSocketFrame(fin: fin, rsv1: rsv1, opcode: opcode, maskKey: mask, data: data)
    }

    private func machine(
        _ endpoint: WebSocketStateMachine.Endpoint,
        offer: String? = "permessage-deflate",
        max: Int = 1 << 20,
        budget: DeflateContextBudget? = nil
    ) -> WebSocketStateMachine {
        WebSocketStateMachine(
            configuration: .init(
                endpoint: endpoint,
                maxMessageSize: max,
                deflate: offer.flatMap { PerMessageDeflate.negotiate(offers: [$0]) },
                deflateBudget: budget
            )
        )
    }

    @Test func inflatesTheRFCExamples() {
        var m = machine(.echo)
        // 7.2.3.1: one frame, then the same message in two fragments.
        #expect(m.receive(frame(.text, hello, rsv1: true)) == .deliver(ByteBuffer(string: "Hello"), opcode: .text))
        #expect(m.receive(frame(.text, Array(hello[..<3]), fin: false, rsv1: true)) == .none)
        #expect(m.receive(frame(.continuation, Array(hello[3...]))) == .deliver(ByteBuffer(string: "Hello"), opcode: .text))
        // 7.2.3.3: a stored (uncompressed) block; 7.2.3.4: a block with BFINAL set; 7.2.3.5: two blocks.
        let stored: [UInt8] = [0x00, 0x05, 0x00, 0xFA, 0xFF, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x00]
        #expect(m.receive(frame(.text, stored, rsv1: true)) == .deliver(ByteBuffer(string: "Hello"), opcode: .text))
        let final: [UInt8] = [0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00]
        #expect(m.receive(frame(.text, final, rsv1: true)) == .deliver(ByteBuffer(string: "Hello"), opcode: .text))
        let twoBlocks: [UInt8] = [0xF2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xCA, 0xC9, 0xC9, 0x07, 0x00]
        #expect(m.receive(frame(.text, twoBlocks, rsv1: true)) == .deliver(ByteBuffer(string: "Hello"), opcode: .text))
        // An uncompressed message in between (RSV1 clear) is taken as it is.
        #expect(m.receive(frame(.binary, [1, 2, 3])) == .deliver(ByteBuffer(bytes: [1, 2, 3]), opcode: .binary))
    }

    @Test func inflatesWithContextTakeover() {
        var m = machine(.textMessages)
        #expect(m.receive(frame(.text, hello, rsv1: true)) == .deliver(ByteBuffer(string: "Hello"), opcode: .text))
        // 7.2.3.2: the second message refers to the first one's window.
        #expect(m.receive(frame(.text, [0xF2, 0x00, 0x11, 0x00, 0x00], rsv1: true)) == .deliver(ByteBuffer(string: "Hello"), opcode: .text))
    }

    @Test func roundTripsWithAndWithoutContextTakeover() throws {
        let messages = (0..<20).map { i in
            ByteBuffer(string: "{\"topic\":\"sensors/\(i % 3)\",\"payload\":{\"t\":\(20 + i),\"unit\":\"C\"},\"pad\":\"\(String(repeating: "x", count: i * 40))\"}")
        }
        for takeover in [true, false] {
            let budget = DeflateContextBudget(limit: 10)
            let c = compressor(takeover: takeover, budget: budget)
            var m = machine(
                .textMessages,
                offer: takeover ? "permessage-deflate" : "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                budget: budget
            )
            var compressedTotal = 0
            for message in messages {
                let result = c.compress(message, allocator: ByteBufferAllocator())
                let compressed = try #require(result)
                compressedTotal += compressed.readableBytes
                // Split in two frames to cover inflating across fragments.
                let bytes = Array(compressed.readableBytesView)
                let cut = bytes.count / 2
                #expect(m.receive(frame(.text, Array(bytes[..<cut]), fin: false, rsv1: true)) == .none)
                #expect(m.receive(frame(.continuation, Array(bytes[cut...]))) == .deliver(message, opcode: .text))
                // Without takeover nothing outlives a message; with it one context per direction.
                #expect(budget.currentContexts == (takeover ? 2 : 0))
            }
            #expect(compressedTotal < messages.reduce(0) { $0 + $1.readableBytes })
            c.release()
            m.closed()
            #expect(budget.currentContexts == 0)
        }
    }

    @Test func mqttStreamInflatesAcrossFrames() throws {
        let c = compressor(takeover: true)
        // A PUBLISH-sized packet of compressible bytes, sent as one compressed message in three frames.
        let packet = ByteBuffer(bytes: [0x30, 0x7F] + Array(repeating: 0x61, count: 127))
        let result = c.compress(packet, allocator: ByteBufferAllocator())
        let bytes = Array(try #require(result).readableBytesView)
        var m = machine(.mqttStream, max: 1024)
        var received = ByteBuffer()
        let pieces = [Array(bytes[..<2]), Array(bytes[2..<4]), Array(bytes[4...])]
        for (i, piece) in pieces.enumerated() {
            let f = i == 0 ? frame(.binary, piece, fin: false, rsv1: true) : frame(.continuation, piece, fin: i == 2)
            switch m.receive(f) {
            case .deliver(var data, opcode: .binary): received.writeBuffer(&data)
            case .none: break
            case let other: Issue.record("unexpected \(other)")
            }
        }
        #expect(received == packet)
    }

    @Test func rsv1IsAProtocolErrorUnlessNegotiatedAndFirst() {
        var plain = machine(.textMessages, offer: nil)
        guard case .sendCloseAndDisconnect(.protocolError, _) = plain.receive(frame(.text, hello, rsv1: true)) else {
            Issue.record("RSV1 accepted without the extension")
            return
        }
        var onContinuation = machine(.textMessages)
        #expect(onContinuation.receive(frame(.text, Array(hello[..<3]), fin: false, rsv1: true)) == .none)
        guard case .sendCloseAndDisconnect(.protocolError, _) = onContinuation.receive(frame(.continuation, Array(hello[3...]), rsv1: true))
        else {
            Issue.record("RSV1 accepted on a continuation frame")
            return
        }
        var onPing = machine(.textMessages)
        guard case .sendCloseAndDisconnect(.protocolError, _) = onPing.receive(frame(.ping, [], rsv1: true)) else {
            Issue.record("RSV1 accepted on a control frame")
            return
        }
        var corrupt = machine(.textMessages)
        guard case .sendCloseAndDisconnect(.dataInconsistentWithMessage, _) = corrupt.receive(frame(.text, [0xFF, 0xFF, 0xFF], rsv1: true)) else {
            Issue.record("corrupt DEFLATE data accepted")
            return
        }
    }

    @Test func decompressionBombStopsAtTheLimit() throws {
        let limit = 64 * 1024
        // 10 MiB of zeros: about 10 KiB compressed.
        let c = compressor(takeover: false)
        let compressedBomb = c.compress(ByteBuffer(repeating: 0, count: 10 << 20), allocator: ByteBufferAllocator())
        let bomb = try #require(compressedBomb)
        #expect(bomb.readableBytes < 16 * 1024)

        // zlib alone: inflating stops one byte past the limit.
        let inflater = try ZlibInflater(windowBits: 15, budget: nil)
        var output = ByteBuffer()
        #expect(inflater.inflate(bomb, into: &output, limit: limit) == .tooLarge)
        #expect(inflater.totalOut <= limit + 1)
        #expect(output.readableBytes <= limit + 1)

        // Through the state machine: 1009, for the JSON API and for the MQTT stream.
        for endpoint in [WebSocketStateMachine.Endpoint.textMessages, .mqttStream] {
            var m = machine(endpoint, max: limit)
            let opcode: WebSocketOpcode = endpoint == .mqttStream ? .binary : .text
            guard case .sendCloseAndDisconnect(.messageTooLarge, _) = m.receive(frame(opcode, Array(bomb.readableBytesView), rsv1: true)) else {
                Issue.record("bomb accepted on \(endpoint)")
                continue
            }
        }
        // A message of exactly the limit is fine.
        let compressedExact = c.compress(ByteBuffer(repeating: 0x20, count: limit), allocator: ByteBufferAllocator())
        let exact = try #require(compressedExact)
        var m = machine(.textMessages, max: limit)
        #expect(m.receive(frame(.text, Array(exact.readableBytesView), rsv1: true)) == .deliver(ByteBuffer(repeating: 0x20, count: limit), opcode: .text))
    }
}
