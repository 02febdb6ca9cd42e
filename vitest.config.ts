import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    globalSetup: ["tests/global-setup.ts"],
    testTimeout: 60_000,
    hookTimeout: 600_000,
    // The e2e tests train real (tiny) models on 2 cores: keep files from competing for them.
    fileParallelism: false,
  },
});
