// The user's files in a remote kernel, in headless Debian Chromium (playwright-core).
//
// JupyterLab (pointed at our gateway) serves the user's home; NOTEBOOK is a notebook in a
// sub-directory of it, beside a data file, using a remote kernelspec. The script opens
// the notebook by its URL, waits for the kernel, runs a cell that reads the data file
// beside the notebook and writes a result file back, then waits until JupyterLab's file
// browser (showing the notebook's folder) lists the result file. It prints "DONE", or
// "FAIL <reason>" and exits 1. Settings: LAB_URL, LAB_TOKEN, NOTEBOOK, KERNEL_DISPLAY_NAME,
// SCREENSHOT.
"use strict";
const { runInBrowser } = require("./common.cjs");

const CELL = [
  "rows = open('data.csv').read().splitlines()",
  "open('result.txt', 'w').write(f'{len(rows) - 1} rows')",
  "print('wrote', len(rows) - 1, 'rows')",
].join("\n");

runInBrowser(async (page) => {
  await page.goto(`${process.env.LAB_URL}/lab/tree/${process.env.NOTEBOOK}?token=${process.env.LAB_TOKEN}`);
  await page
    .locator(".jp-StatusBar-TextItem", { hasText: `${process.env.KERNEL_DISPLAY_NAME} | Idle` })
    .first()
    .waitFor({ timeout: 180000 });
  console.log("STEP kernel-ready");
  const cell = page.locator(".jp-Notebook .jp-Cell").first();
  await cell.locator(".cm-content").click();
  // (typed line by line: the editor indents nothing here, and Enter is a new line)
  for (const [i, line] of CELL.split("\n").entries()) {
    if (i > 0) await page.keyboard.press("Enter");
    await page.keyboard.type(line);
  }
  await page.keyboard.press("Control+Enter");
  await cell.locator(".jp-OutputArea-output", { hasText: "wrote 2 rows" }).first().waitFor({ timeout: 60000 });
  console.log("STEP cell-ran");
  // The file browser shows the notebook's folder; it lists new files on its next
  // refresh (JupyterLab polls the server's contents), or when asked to.
  const listed = page.locator(".jp-DirListing-item", { hasText: "result.txt" }).first();
  try {
    await listed.waitFor({ timeout: 30000 });
  } catch (e) {
    await page.locator(".jp-FileBrowser [data-command='filebrowser:refresh']").first().click();
    await listed.waitFor({ timeout: 30000 });
  }
  console.log("STEP listed");
  await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  console.log("DONE");
});
