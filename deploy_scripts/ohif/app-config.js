/** @type {AppTypes.Config} */
// hippo-scp: OHIF configuration served at /app-config.js by deploy_scripts/ohif_server.py in
// place of the one shipped in @ohif/app's dist/. It reads Orthanc's DICOMweb API same-origin:
// the server proxies /dicom-web and /wado to Orthanc, so no CORS and no hard-coded host.
window.config = {
  name: 'hippo-scp/orthanc',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  experimentalStudyBrowserSort: false,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  allowMultiSelectExport: false,
  // Hide the "investigational use" dialog: the node's own reports carry that statement.
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: {
    interaction: 100,
    thumbnail: 5,
    prefetch: 25,
  },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (hippo-scp PACS)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        // Load SEG frames one by one (WADO-RS frames), not by cutting the whole instance in
        // the browser: OHIF 3.13 mis-cuts 1-bit frames that are not a whole number of bytes
        // (e.g. 51 x 35 pixels): the overlay gets a lattice of wrong pixels. Orthanc 1.10
        // refuses those frames; ohif_server.py serves them (see its docstring).
        loadMultiframeAsPart10: false,
        bulkDataURI: {
          enabled: true,
          relativeResolution: 'studies',
        },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
  httpErrorHandler: error => {
    console.warn('DICOMweb request failed', error.status);
  },
};
