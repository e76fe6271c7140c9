// Applies graphics operations strictly in the order the gateway sent them. Most operations
// are synchronous; an H.264 picture is a promise that settles when the decoder outputs it.
// A later operation (a fill, a copy, a frame acknowledgement) waits for the pictures before
// it, exactly as the server meant; while nothing is waiting, operations run at once.

export class Pipeline {
  constructor(onError) {
    this.onError = onError;
    this.queue = [];
    this.running = false;
  }

  // `op()` may return a promise; the next operation starts once it settles.
  push(op) {
    this.queue.push(op);
    if (!this.running) this.run();
  }

  get length() {
    return this.queue.length;
  }

  async run() {
    this.running = true;
    while (this.queue.length > 0) {
      const op = this.queue.shift();
      try {
        const r = op();
        if (r && typeof r.then === "function") await r;
      } catch (e) {
        // One bad operation must not stop the ones after it (and their frame acks).
        this.onError(e);
      }
    }
    this.running = false;
  }

  // Drops everything not yet applied (the session ended).
  clear() {
    this.queue.length = 0;
  }
}
