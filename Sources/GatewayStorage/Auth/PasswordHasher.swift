import Metrics
import NIOPosix

/// Runs password hashing and verification on a small thread pool of its own.
///
/// scrypt takes tens of milliseconds of CPU and 16 MiB per call; on an event loop that would stall
/// every connection of the loop, and on the cooperative pool it would hold one of its few threads. So
/// each call runs on one of `threads` dedicated threads, at most `threads` at once (so memory is
/// bounded by threads × 16 MiB), and at most `maxPending` calls wait; past that a call fails with
/// ``AsyncLimiter/Full`` at once (the client gets "server unavailable" and retries) and
/// `iotgw_auth_hash_rejected_total` counts it.
public final class PasswordHasher: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// Threads (and concurrent hash computations). Default 2.
        public var threads: Int = 2
        /// Calls that may wait for a thread; more are refused. Default 1,000.
        public var maxPending: Int = 1_000
        /// Parameters of new hashes (verification uses the ones stored in each hash). Default
        /// ``PasswordHash/Parameters/default``.
        public var parameters: PasswordHash.Parameters = .default

        public init() {}
    }

    private let threadPool: NIOThreadPool
    private let limiter: AsyncLimiter
    let configuration: Configuration
    private let hashTimer = Timer(label: "iotgw_auth_hash_seconds", preferredDisplayUnit: .seconds)
    private let rejected = Counter(label: "iotgw_auth_hash_rejected_total")

    /// Starts the threads; call ``shutdown()`` when done.
    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        self.threadPool = NIOThreadPool(numberOfThreads: max(1, configuration.threads))
        self.limiter = AsyncLimiter(permits: configuration.threads, maxWaiting: configuration.maxPending)
        threadPool.start()
    }

    /// The most computations that ran at once.
    var peakConcurrency: Int { limiter.peakInside }

    /// Hashes `password` with a fresh salt; returns the encoded string to store.
    public func hash(_ password: [UInt8]) async throws -> String {
        let parameters = configuration.parameters
        return try await run { try PasswordHash.make(password: password, parameters: parameters).encoded }
    }

    /// Whether `password` matches `encoded`.
    /// - Throws: ``PasswordHash/FormatError`` for a string that is not a hash this code can check,
    ///   ``AsyncLimiter/Full`` when too many calls are waiting.
    public func verify(_ password: [UInt8], against encoded: String) async throws -> Bool {
        let stored = try PasswordHash(encoded: encoded)
        return try await run { try stored.verify(password) }
    }

    private func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        do {
            return try await limiter.run {
                let started = ContinuousClock.now
                defer {
                    let elapsed = started.duration(to: .now).components
                    hashTimer.recordNanoseconds(elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000)
                }
                return try await threadPool.runIfActive(work)
            }
        } catch let error as AsyncLimiter.Full {
            rejected.increment()
            throw error
        }
    }

    /// Stops the threads; later calls fail.
    public func shutdown() async {
        try? await threadPool.shutdownGracefully()
    }
}
