// The receiver of the provider's documentation (/work/shared/seed/midjourney-callbacks.zh.md),
// as close to it as a benchmark allows: Express, express.json(), log the callback, answer 200.
// Only the port (PORT, default 3000) and a health route for the benchmark's readiness probe
// are added. Run: NODE_PATH=bench/node/node_modules node bench/baselines/express_receiver.js
const express = require('express');
const app = express();

app.use(express.json());

app.post('/callbacks/midjourney', (req, res) => {
  const { code, msg, data } = req.body;

  console.log('收到Midjourney图片生成回调:', {
    taskId: data.taskId,
    status: code,
    message: msg
  });

  if (code === 200) {
    console.log('Midjourney图片生成完成');
    try {
      const promptData = JSON.parse(data.promptJson);
      console.log('原始提示词:', promptData.prompt);
    } catch (e) {
      console.log('解析promptJson失败:', e);
    }
    const resultUrls = data.resultUrls || [];
    console.log(`共生成 ${resultUrls.length} 张图片:`);
    resultUrls.forEach((url, index) => {
      console.log(`图片 ${index + 1}: ${url}`);
    });
  } else {
    console.log('Midjourney图片生成失败:', msg);
  }

  res.status(200).json({ status: 'received' });
});

app.get('/healthz', (req, res) => res.status(200).json({ status: 'ok' }));

const port = Number(process.env.PORT || 3000);
app.listen(port, '127.0.0.1', () => {
  console.log(`回调服务器运行在端口${port}`);
});
