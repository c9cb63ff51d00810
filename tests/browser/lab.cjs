// JupyterLab end to end in headless Debian Chromium, driven by playwright-core.
//
// The pytest side starts JupyterLab (pointed at our gateway) and runs this script with
// LAB_URL, LAB_TOKEN, KERNEL_DISPLAY_NAME and SCREENSHOT set. The script opens the
// launcher, picks the kernelspec's notebook card, runs a cell, then prints
// "STEP first-cell" and waits for a "CONTINUE" line on stdin (the test restarts the
// gateway meanwhile), runs a second cell that needs the first one's state, saves a
// screenshot and prints "DONE". Any failure prints "FAIL <reason>" and exits 1.
"use strict";
const readline = require("readline");
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

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (line) => {
  const next = waiting.shift();
  if (next) next(line.trim());
});
const nextLine = () => new Promise((resolve) => waiting.push(resolve));

async function runCell(page, code, expected, attempts) {
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const editor = page.locator(".jp-Notebook .jp-Cell.jp-mod-active .cm-content");
    await editor.click();
    if (attempt === 1) {
      await page.keyboard.type(code);
    }
    await page.keyboard.press(attempt === 1 ? "Shift+Enter" : "Control+Enter");
    const output = page.locator(".jp-OutputArea-output", { hasText: expected });
    try {
      await output.first().waitFor({ timeout: 15000 });
      return;
    } catch (e) {
      if (attempt === attempts) throw new Error(`no output ${JSON.stringify(expected)}: ${e}`);
      // The message was lost while the gateway restarted: select that cell, run it again.
      await page.locator(".jp-Notebook .jp-Cell").nth(-2).click();
    }
  }
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: FLAGS,
    headless: true,
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  try {
    page.setDefaultTimeout(60000);
    await page.goto(`${process.env.LAB_URL}/lab?token=${process.env.LAB_TOKEN}`);
    const card = page.locator(
      `.jp-LauncherCard[data-category="Notebook"][title="${process.env.KERNEL_DISPLAY_NAME}"]`
    );
    await card.click({ timeout: 120000 });
    await page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').waitFor({ timeout: 120000 });
    await runCell(page, "x = 6 * 7; print(x)", "42", 3);
    console.log("STEP first-cell");
    if ((await nextLine()) !== "CONTINUE") throw new Error("the test did not say CONTINUE");
    await page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').waitFor({ timeout: 120000 });
    await runCell(page, "print(x + 1)", "43", 3);
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    console.log("DONE");
  } catch (e) {
    // What the page showed, for the test's report: a dialog's text, and a screenshot.
    const dialogs = await page.locator(".jp-Dialog").allInnerTexts().catch(() => []);
    await page.screenshot({ path: process.env.SCREENSHOT.replace(/\.png$/, "-failure.png") }).catch(() => {});
    throw new Error(`${e.message.split("\n")[0]}; dialogs: ${JSON.stringify(dialogs)}`);
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(`FAIL ${String(e).split("\n").join(" ")}`);
    process.exit(1);
  }
);
