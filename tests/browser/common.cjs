// What every browser script shares: headless Debian Chromium that reaches nothing but
// loopback, a screenshot and the page's dialogs on failure, and the exit protocol
// ("FAIL <reason>" and status 1, which the pytest side reads).
"use strict";
const { chromium } = require("playwright-core");

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // Nothing but loopback: any other host name fails to resolve.
  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
];

// Runs ``steps(page)`` in a fresh page; exits 0, or prints FAIL and exits 1.
function runInBrowser(steps) {
  const run = async () => {
    const browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: FLAGS,
      headless: true,
    });
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    try {
      page.setDefaultTimeout(60000);
      await steps(page);
    } catch (e) {
      // What the page showed, for the test's report: a dialog's text, and a screenshot.
      const dialogs = await page.locator(".jp-Dialog").allInnerTexts().catch(() => []);
      await page.screenshot({ path: process.env.SCREENSHOT.replace(/\.png$/, "-failure.png") }).catch(() => {});
      throw new Error(`${e.message.split("\n")[0]}; dialogs: ${JSON.stringify(dialogs)}`);
    } finally {
      await browser.close();
    }
  };
  run().then(
    () => process.exit(0),
    (e) => {
      console.log(`FAIL ${String(e).split("\n").join(" ")}`);
      process.exit(1);
    }
  );
}

module.exports = { runInBrowser };
