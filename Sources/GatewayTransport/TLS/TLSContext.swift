import NIOCore
import NIOSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// TLS settings of the `mqtts` and `wss` listeners, as paths.
public struct TLSSettings: Sendable, Hashable {
    /// PEM file with the server certificate (and any intermediates after it).
    public var certificateFile: String
    /// PEM file with the server's private key.
    public var keyFile: String
    /// PEM file with the CA certificates that sign client certificates; nil: client certificates are
    /// neither requested nor checked.
    public var caFile: String?
    /// Whether a client must present a certificate signed by ``caFile`` (mTLS). When false but
    /// ``caFile`` is set, a presented certificate is still verified.
    public var verifyClient: Bool
    /// Whether the client certificate's subject CN replaces the username of CONNECT (and of the JSON
    /// API's synthesized CONNECT) before authentication.
    public var useCommonNameAsUsername: Bool
    /// TLS handshakes in progress at once, over both TLS listeners; a connection past it is closed at
    /// accept. Default 1,000.
    public var maxConcurrentHandshakes: Int
    /// Seconds a TLS handshake may take; then the connection is closed. Default 10.
    public var handshakeTimeout: Double

    public init(
        certificateFile: String,
        keyFile: String,
        caFile: String? = nil,
        verifyClient: Bool = false,
        useCommonNameAsUsername: Bool = false,
        maxConcurrentHandshakes: Int = 1_000,
        handshakeTimeout: Double = 10
    ) {
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.caFile = caFile
        self.verifyClient = verifyClient
        self.useCommonNameAsUsername = useCommonNameAsUsername
        self.maxConcurrentHandshakes = maxConcurrentHandshakes
        self.handshakeTimeout = handshakeTimeout
    }
}

/// Why TLS could not be set up: which file, and what is wrong with it.
public struct TLSSetupError: Error, CustomStringConvertible, Sendable {
    /// Which setting the problem is in.
    public enum Field: Sendable, Hashable {
        case certificateFile
        case keyFile
        case caFile
    }

    public var field: Field
    public var path: String
    public var message: String

    public var description: String { "\(path): \(message)" }
}

/// A loaded server TLS context (certificates read and checked at start-up, before binding), shared by
/// every TLS listener.
public struct TLSContext: Sendable {
    let sslContext: NIOSSLContext
    let useCommonNameAsUsername: Bool
    let handshakes: TLSHandshakeLimiter

    /// Reads the certificate, key and CA files and builds the context. Reading files blocks, so call
    /// this at start-up only, never on an event loop.
    /// - Throws: ``TLSSetupError`` naming the file at fault.
    public init(settings: TLSSettings) throws(TLSSetupError) {
        try Self.checkReadable(settings.certificateFile, .certificateFile)
        try Self.checkReadable(settings.keyFile, .keyFile)
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(settings.certificateFile)
        } catch {
            throw TLSSetupError(field: .certificateFile, path: settings.certificateFile, message: "not a PEM certificate (\(error))")
        }
        guard !chain.isEmpty else {
            throw TLSSetupError(field: .certificateFile, path: settings.certificateFile, message: "contains no certificate")
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: settings.keyFile, format: .pem)
        } catch {
            throw TLSSetupError(field: .keyFile, path: settings.keyFile, message: "not a PEM private key (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        configuration.minimumTLSVersion = .tlsv12
        if let caFile = settings.caFile {
            try Self.checkReadable(caFile, .caFile)
            let roots: [NIOSSLCertificate]
            do {
                roots = try NIOSSLCertificate.fromPEMFile(caFile)
            } catch {
                throw TLSSetupError(field: .caFile, path: caFile, message: "not a PEM certificate (\(error))")
            }
            guard !roots.isEmpty else {
                throw TLSSetupError(field: .caFile, path: caFile, message: "contains no certificate")
            }
            configuration.trustRoots = .certificates(roots)
            configuration.certificateVerification = settings.verifyClient ? .noHostnameVerification : .optionalVerification
        } else {
            configuration.certificateVerification = .none
        }
        do {
            sslContext = try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSSetupError(field: .keyFile, path: settings.keyFile, message: "does not match the certificate in \(settings.certificateFile) (\(error))")
        }
        useCommonNameAsUsername = settings.useCommonNameAsUsername
        handshakes = TLSHandshakeLimiter(
            limit: settings.maxConcurrentHandshakes,
            timeout: .milliseconds(Int64(settings.handshakeTimeout * 1000))
        )
    }

    private static func checkReadable(_ path: String, _ field: TLSSetupError.Field) throws(TLSSetupError) {
        guard !path.isEmpty else { throw TLSSetupError(field: field, path: path, message: "no file given") }
        if access(path, R_OK) != 0 {
            let reason = String(cString: strerror(errno))
            throw TLSSetupError(field: field, path: path, message: "cannot read the file (\(reason))")
        }
    }

    /// The subject CN of the client certificate on `channel`, when the connection is TLS and the client
    /// presented one.
    static func peerCommonName(of channel: any Channel) async -> String? {
        let certificate: NIOSSLCertificate?
        do {
            certificate = try await channel.nioSSL_peerCertificate().get()
        } catch {
            return nil  // not a TLS channel (or already closed)
        }
        return certificate?.subjectName.first(where: { $0.type == .commonName })?.value
    }

    /// Adds the handlers that terminate TLS on a new connection: NIO's TLS handler and the guard that
    /// bounds handshakes in progress and their time.
    func addServerHandlers(to pipeline: ChannelPipeline.SynchronousOperations) throws {
        try pipeline.addHandler(NIOSSLServerHandler(context: sslContext))
        try pipeline.addHandler(TLSHandshakeGuard(limiter: handshakes))
    }
}
