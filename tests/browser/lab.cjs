// JupyterLab end to end in headless Debian Chromium, driven by playwright-core.
//
// The pytest side starts JupyterLab (pointed at our gateway) and runs this script with
// LAB_URL, LAB_TOKEN, KERNEL_DISPLAY_NAME and SCREENSHOT set. With HUB_URL, HUB_USER and
// HUB_PASSWORD instead, the script logs in through JupyterHub's login page, which spawns
// the user's JupyterLab, and runs one cell only (ONE_CELL). The script opens the
// launcher, picks the kernelspec's notebook card, runs a cell, then prints
// "STEP first-cell" and waits for a "CONTINUE" line on stdin (the test restarts the
// gateway meanwhile), runs a second cell that needs the first one's state, prints
// "STEP second-cell" and waits again (another client restarts the kernel at the gateway,
// which JupyterLab does not reconnect after), then runs a third cell once, which must
// show its output with the state gone, saves a screenshot and prints "DONE". Any
// failure prints "FAIL <reason>" and exits 1.
"use strict";
const readline = require("readline");
const { runInBrowser } = require("./common.cjs");

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (line) => {
  const next = waiting.shift();
  if (next) next(line.trim());
});
const nextLine = () => new Promise((resolve) => waiting.push(resolve));

async function runCell(page, index, code, expected, attempts) {
  // Cell ``index`` (0-based) gets ``code`` and is run in place (Ctrl+Enter); if its
  // output does not come (the execute was lost while a connection was re-made), the
  // same cell is run again, as a user would.
  const cell = page.locator(".jp-Notebook .jp-Cell").nth(index);
  await cell.locator(".cm-content").click();
  await page.keyboard.type(code);
  for (let attempt = 1; attempt <= attempts; attempt++) {
    await cell.locator(".cm-content").click();
    await page.keyboard.press("Control+Enter");
    try {
      await cell.locator(".jp-OutputArea-output", { hasText: expected }).first().waitFor({ timeout: 45000 });
      return attempt;
    } catch (e) {
      if (attempt === attempts) throw new Error(`cell ${index}: no output ${JSON.stringify(expected)}: ${e}`);
    }
  }
  return attempts;
}

async function kernelIdle(page) {
  // The notebook's execution indicator says "idle" before any kernel is connected; the
  // status bar's "<kernel> | Idle" comes only once the kernel's websocket is up and the
  // kernel answered, as a user would wait for before running a cell.
  await page
    .locator(".jp-StatusBar-TextItem", { hasText: `${process.env.KERNEL_DISPLAY_NAME} | Idle` })
    .first()
    .waitFor({ timeout: 120000 });
}

async function addCell(page) {
  await page.keyboard.press("Escape");
  await page.keyboard.press("b"); // command mode: insert a cell below
}

runInBrowser(async (page) => {
  if (process.env.HUB_URL) {
    await page.goto(`${process.env.HUB_URL}/hub/login`);
    await page.fill("#username_input", process.env.HUB_USER);
    await page.fill("#password_input", process.env.HUB_PASSWORD);
    await page.click("#login_submit");
    // The Hub spawns the user's server, then sends the browser to its JupyterLab.
    await page.waitForURL(/\/user\/[^/]+\/lab/, { timeout: 120000 });
    console.log("STEP logged-in");
  } else {
    await page.goto(`${process.env.LAB_URL}/lab?token=${process.env.LAB_TOKEN}`);
  }
  const card = page.locator(
    `.jp-LauncherCard[data-category="Notebook"][title="${process.env.KERNEL_DISPLAY_NAME}"]`
  );
  await card.click({ timeout: 120000 });
  await kernelIdle(page);
  const first = await runCell(page, 0, "x = 6 * 7; print(x)", "42", 3);
  console.log(`RUNS first-cell ${first}`);
  if (process.env.ONE_CELL) {
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    console.log("DONE");
    return;
  }
  console.log("STEP first-cell");
  if ((await nextLine()) !== "CONTINUE") throw new Error("the test did not say CONTINUE");
  await kernelIdle(page);
  await addCell(page);
  const second = await runCell(page, 1, "print(x + 1)", "43", 3);
  console.log(`RUNS second-cell ${second}`);
  console.log("STEP second-cell");
  if ((await nextLine()) !== "CONTINUE") throw new Error("the test did not say CONTINUE");
  await addCell(page);
  // One run only: on the kept websocket, its output must not be lost.
  await runCell(page, 2, "print('x' in globals(), 3)", "False 3", 1);
  console.log("RUNS third-cell 1");
  await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  console.log("DONE");
});
